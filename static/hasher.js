// SHA-256 on a thread of its own (driven by app/store/hasher.py), so that hashing a download overlaps
// fetching and writing it. A classic worker: the vendored hash-wasm build is a UMD script.
importScripts("vendor/hashwasm/sha256.umd.min.js");

let sha;
let queue = hashwasm.createSHA256().then((created) => { sha = created; sha.init(); });

self.onmessage = ({ data }) => {
  queue = queue
    .then(() => {
      if (data.type === "update") {
        sha.update(new Uint8Array(data.buffer, data.offset, data.length));
        self.postMessage({ type: "hashed", n: data.length });
      } else {
        self.postMessage({ type: "digest", hex: sha.digest("hex") });
      }
    })
    .catch((err) => self.postMessage({ type: "error", message: String(err) }));
};
