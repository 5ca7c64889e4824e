"""Videos: ``upscale_video`` decodes a video with PyAV (FFmpeg's libraries), upscales each frame
with the image pipeline and encodes it again, copying audio and subtitles (docs/inference.md,
"Video"). PyAV is an optional dependency (``pip install "reprfn[video]"``): nothing here imports
it until a video is read, so deciding what is a video and where it goes needs none.

  paths.py     which files are videos, the containers written, where a batch's outputs go
  colour.py    YUV <-> RGB with the stream's matrix and range; odd sizes with halved chroma
  streams.py   opening, stream choice, copies, encoder settings; FFmpeg errors as one line
  pipeline.py  the frame loop, timestamps, the check that the input was complete
  upscale.py   ``upscale_video``: the checks before any work, the atomic write, the progress bar
"""

from .paths import VIDEO_SUFFIXES, is_video, video_file_output, video_output_path
from .upscale import INSTALL, check_crf, check_encoder, require_av, upscale_video

__all__ = ["INSTALL", "VIDEO_SUFFIXES", "check_crf", "check_encoder", "is_video", "require_av", "upscale_video",
           "video_file_output", "video_output_path"]
