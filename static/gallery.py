# Gallery (page side): placeholder, replaced by the real gallery UI.
def setup(send, apply_settings):
    pass


def on_message(msg):
    pass


def autosave():
    return False
