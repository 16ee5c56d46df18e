"""What a model folder's files say about its install (app/store/layout.py), for variants that convert."""

from app.store.layout import (PARTIAL, RECORD, WANTED, bundle_state, convert_reserve, kept_bytes, leftovers, record_for,
                              stale_imports)

SOURCE = {"path": "onnx/unet_model_q4f16.onnx", "url": "/x", "size": 100, "sha256": "a" * 64}
TOKENIZER = {"path": "tokenizer/tokenizer.json", "url": "/y", "size": 10, "sha256": "b" * 64}
ENTRY = {"variant": "q4", "files": [SOURCE, TOKENIZER],
         "convert": {"from": {"unet": SOURCE["path"]}, "to": "fp32-activations"}}
CONVERTED = {"unet/model.onnx": ["c" * 64, 7], "unet/model.onnx_data": ["d" * 64, 150]}
RECORDED = dict(record_for(ENTRY), converted=CONVERTED)
ALL = {SOURCE["sha256"]: 100, TOKENIZER["sha256"]: 10, "c" * 64: 7, "d" * 64: 150}


def test_a_converted_install_needs_its_converted_files_too():
    assert bundle_state(ENTRY, ALL, RECORDED)[0] == "installed"
    without_data = {k: v for k, v in ALL.items() if k != "d" * 64}
    state, _, detail = bundle_state(ENTRY, without_data, RECORDED)
    assert state == "damaged" and "unet/model.onnx_data" in detail  # Repair converts it again


def test_downloaded_but_not_converted_says_so():
    state, done, detail = bundle_state(ENTRY, ALL, None)  # a reload mid-conversion: no installed.json yet
    assert (state, done) == ("partial", 110) and "not yet converted" in detail


def test_the_reserve_for_converted_files_doubles_the_sources_only():
    assert convert_reserve(ENTRY) == 200 and convert_reserve(dict(ENTRY, convert={})) == 0
    split = dict(ENTRY, convert={"from": {"unet": SOURCE["path"]}, "to": "external-data"})
    assert convert_reserve(split) == 100  # a split moves the weights, it does not grow them


def test_leftovers_are_what_belongs_neither_to_the_download_nor_to_the_conversion():
    names = list(ALL) + [RECORD, WANTED, "e" * 64, "unet-data" + PARTIAL, SOURCE["sha256"] + PARTIAL,
                         f"import-{10**18}{PARTIAL}"]  # an import being copied in: not the install's to remove
    assert leftovers(ENTRY, names, RECORDED) == sorted(["e" * 64, "unet-data" + PARTIAL])
    assert "c" * 64 in leftovers(ENTRY, names)  # without the record, converted files are not known


def test_only_import_copies_a_closed_tab_left_are_stale():
    hour = 3600 * 10**9
    names = [f"import-{5 * hour}{PARTIAL}", f"import-{9 * hour}{PARTIAL}", "a" * 64 + PARTIAL, "import-x.partial"]
    assert stale_imports(names, now_ns=10 * hour) == [f"import-{5 * hour}{PARTIAL}"]


def test_a_folder_keeps_what_its_files_take_records_aside():
    assert kept_bytes({"a" * 64: 100, "b" * 64 + PARTIAL: 20, RECORD: 50, WANTED: 10}) == 120


def test_a_download_promises_no_time_left_before_it_has_a_second_of_samples():
    """A burst of reads at the start (buffers filling) once gave "0 s left" at 44%."""
    from app.store.download import Rate

    rate = Rate()
    for i in range(50):  # 50 MB in 50 ms
        rate.add(10 + i / 1000, (i + 1) * 1_000_000)
    assert rate.speed() > 0 and rate.eta(50_000_000) is None
    rate.add(11.2, 60_000_000)
    assert rate.eta(60_000_000) == 60_000_000 / rate.speed()


CHECKPOINT = {"path": "unet/diffusion_pytorch_model.fp16.safetensors", "url": "/u", "size": 900, "sha256": "e" * 64}
FROM_CHECKPOINT = {"variant": "q4", "files": [CHECKPOINT],
                   "convert": {"from": "checkpoint", "to": "q4", "family": "sdxl", "bytes": 500}}


def test_files_reused_from_an_installed_model_count_as_present_before_the_conversion():
    """A paused refiner install whose bigG is copied from SDXL-Turbo: the percentage counts it as the download
    does, and once the UNet is down the row says what Install does next (convert), not "Paused at 50%"."""
    reused = {"path": "text_encoder_2/model.fp16.safetensors", "url": "/t", "size": 900, "sha256": "f" * 64}
    entry = dict(FROM_CHECKPOINT, files=[CHECKPOINT, reused])
    half = {CHECKPOINT["sha256"] + PARTIAL: 450}
    assert bundle_state(entry, half, None)[1:] == (450, "Paused at 25%. Install resumes it.")
    assert bundle_state(entry, half, None, [reused])[1:] == (1350, "Paused at 75%. Install resumes it.")
    state, done, detail = bundle_state(entry, {CHECKPOINT["sha256"]: 900}, None, [reused])
    assert (state, done) == ("partial", 1800) and detail.startswith("Downloaded, not yet converted")


def test_a_model_made_from_a_checkpoint_keeps_only_the_converted_files():
    record = dict(record_for(FROM_CHECKPOINT), converted=CONVERTED)
    converted = {"c" * 64: 7, "d" * 64: 150}
    assert bundle_state(FROM_CHECKPOINT, converted, record)[0] == "installed"  # the download is gone
    assert bundle_state(FROM_CHECKPOINT, {CHECKPOINT["sha256"]: 900}, None)[2].startswith("Downloaded, not yet converted")
    assert bundle_state(FROM_CHECKPOINT, {"c" * 64: 7}, record)[0] == "damaged"  # Install downloads and converts again
    assert convert_reserve(FROM_CHECKPOINT) == 500
