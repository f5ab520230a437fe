"""The status every sample row carries from reading to the manifest, one word per outcome, so
that a bad image is a recorded row and never a crashed job."""

OK = "ok"
READ_ERROR = "read_error"  # the format could not give the sample's bytes
DECODE_ERROR = "decode_error"  # bytes that are no image, or a broken one
UNSUPPORTED = "unsupported"  # an image format outside `decode.ALLOWED_FORMATS`
TOO_LARGE = "too_large"  # more pixels than the decoder accepts
