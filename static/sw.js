// Service worker: keeps the whole app in Cache Storage so later visits need no network, and adds
// the cross-origin isolation and security headers (CSP, nosniff...) to what it serves, for static
// hosts that cannot send them. build.py replaces the next line with this build's version, files
// (site path -> content hash) and headers (headers.json).
const BUILD = {"version": "unbuilt", "files": {}, "headers": {}};

const PREFIX = "lantern-";
const CACHE = PREFIX + BUILD.version;
const HASH_HEADER = "X-Lantern-Hash";
const ISOLATION = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};
const scope = new URL("./", self.location);

// The stored copy: the bytes as fetched, only once their sha256 is the build's, with the host's
// headers (those that still describe the bytes), the app's headers and the content hash (a later
// version reuses the copy instead of downloading a file that did not change).
const DROPPED = ["content-length", "content-encoding", "transfer-encoding"];

async function hashPrefix(buffer) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

function isolated(response, body, hash) {
  const headers = new Headers(response.headers);
  for (const name of DROPPED) headers.delete(name);
  for (const [name, value] of Object.entries({ ...ISOLATION, ...BUILD.headers })) headers.set(name, value);
  if (hash) headers.set(HASH_HEADER, hash);
  return new Response(body, { status: response.status, statusText: response.statusText, headers });
}

// Never keeps an error, an opaque answer or bytes that are not this build's (a host's error page, a
// proxy's truncated copy): they would be served on every visit after.
async function verified(response, hash, url) {
  if (!response.ok || response.type === "opaque") throw new Error(`${url}: HTTP ${response.status}`);
  const body = await response.arrayBuffer();
  if ((await hashPrefix(body)) !== hash) throw new Error(`${url}: these bytes are not this build's`);
  return isolated(response, body, hash);
}

async function unchangedCopy(url, hash) {
  for (const name of await caches.keys()) {
    if (name.startsWith(PREFIX) && name !== CACHE) {
      const old = await (await caches.open(name)).match(url);
      if (old && old.headers.get(HASH_HEADER) === hash) {
        try {
          return await verified(old, hash, url); // the label alone is not trusted
        } catch {
          return null;
        }
      }
    }
  }
  return null;
}

async function precache() {
  const cache = await caches.open(CACHE);
  await Promise.all(Object.entries(BUILD.files).map(async ([path, hash]) => {
    const url = new URL(path, scope).href;
    if (await cache.match(url)) return; // an interrupted install left it
    const response = (await unchangedCopy(url, hash)) || (await verified(await fetch(url, { cache: "no-cache" }), hash, url));
    await cache.put(url, response);
  }));
}

// A new version takes over at once (the page reloads itself when that happens, see offline.py),
// so an update needs no closing of tabs and old caches go as soon as it is active.
self.addEventListener("install", (event) => {
  self.skipWaiting();
  event.waitUntil(precache());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    await self.clients.claim(); // first, so that no page is left with a worker whose cache is gone
    const names = await caches.keys();
    await Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n)));
  })());
});

// The app's own files come from the cache; everything else (model downloads with their Range
// requests, anything of another origin) goes to the network untouched.
self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || request.headers.has("Range") || url.origin !== scope.origin) return;
  if (!url.pathname.startsWith(scope.pathname)) return;
  const path = url.pathname.slice(scope.pathname.length) || "index.html";
  if (!Object.hasOwn(BUILD.files, path)) return;
  event.respondWith((async () => {
    const url = new URL(path, scope).href;
    // A request this worker took just before a newer version deleted its cache finds the same bytes
    // in the newer cache; only a file evicted by the browser is fetched again.
    const cached = (await caches.match(url, { cacheName: CACHE })) || (await unchangedCopy(url, BUILD.files[path]));
    if (cached) return cached;
    const response = await fetch(request);
    return isolated(response, response.body, null);
  })());
});
