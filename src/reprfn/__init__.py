"""reprfn: RepRFN and its family for lightweight single-image super-resolution."""

__version__ = "0.1.0"

from .api import upscale, upscale_file  # noqa: E402
from .checkpoint import CheckpointError, load_model, save_model  # noqa: E402
from .models import build, fuse  # noqa: E402
from .video import upscale_video  # noqa: E402

__all__ = ["CheckpointError", "__version__", "build", "fuse", "load_model", "save_model", "upscale", "upscale_file",
           "upscale_video"]
