"""Videos: ``reprfn.upscale_video`` and ``reprfn upscale`` on video files. Tiny clips (32x24, a few
frames) are made with PyAV in tmp_path; the models are tiny (or nearest-neighbour) so that only the
pipeline costs time: decoding, colour, timestamps, stream copies, refusals."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reprfn
from reprfn.cli import main
from reprfn.errors import UsageError, VideoError
from reprfn.models import build

from .helpers import assert_close_levels, asymmetric_photo, randomize

av = pytest.importorskip("av")

from reprfn.video.colour import guess_matrix  # noqa: E402 - imports PyAV

LOSSLESS = {"codec": "libx264rgb", "crf": 0}  # RGB H.264 at crf 0: every pixel as given
ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
              b"Style: Default,Arial,16\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, "
              b"MarginV, Effect, Text\n")


class Nearest(nn.Module):
    """Nearest-neighbour upscaling as a model: colours pass through it unchanged."""

    in_channels, arch = 3, "nearest"

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4, deploy=True)).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny_x2.safetensors"
    reprfn.save_model(tiny, path)
    return path


def frames_rgb(n: int, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """A photo crop panning one pixel a frame: natural content, every frame different."""
    photo = asymmetric_photo()
    h, w = size
    return [np.ascontiguousarray(np.resize(np.roll(photo, i, axis=1), (max(h, 36), max(w, 52), 3))[:h, :w])
            for i in range(n)]


def make_video(path: Path, n: int = 6, *, size: tuple[int, int] = (24, 32), rate: int = 25,
               pts: list[int] | None = None, time_base: Fraction | None = None, codec: str = "libx264",
               pix_fmt: str = "yuv420p", matrix: str | None = None, full: bool = False, rotation: int | None = None,
               audio: str | None = None, subtitle: str | None = None, crf: int | None = None) -> list[np.ndarray]:
    """Write a clip; return the RGB frames it was made from. ``matrix``: tag and convert with
    "ITU709"/"ITU601" (None: untagged); ``audio``: an audio encoder for a 0.5 s tone;
    ``subtitle``: a text subtitle encoder (subrip, mov_text) for two cues."""
    rgb = frames_rgb(n, size)
    fmt = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".webm": "webm"}.get(path.suffix)
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(codec, rate=rate)
        v.height, v.width = size
        v.pix_fmt = pix_fmt
        if time_base is not None:
            v.time_base = v.codec_context.time_base = time_base
        if crf is not None:
            v.codec_context.options = {"crf": str(crf)}
        tag = {"ITU709": 1, "ITU601": 6}.get(matrix or "", 2)
        v.codec_context.colorspace = tag
        v.codec_context.color_range = 2 if full else 1
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = sub = None
        if audio:
            a = out.add_stream(audio, rate=8000)
            a.layout = "mono"
        if subtitle:
            sub = out.add_stream(subtitle)
            sub.codec_context.time_base = Fraction(1, 1000)
            sub.codec_context.subtitle_header = ASS_HEADER
            sub.metadata["language"] = "fra"
        for i, arr in enumerate(rgb):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if not av.VideoFormat(pix_fmt).is_rgb:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix or "ITU601",
                                       dst_color_range="JPEG" if full else "MPEG")
                frame.colorspace = tag
            frame.pts = i if pts is None else pts[i]
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            fmt_a = a.codec_context.codec.audio_formats[0].name
            t = np.arange(4000) / 8000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
            samples = {"s16": (tone * 32767).astype(np.int16), "u8": (tone * 127 + 128).astype(np.uint8)}.get(
                fmt_a.rstrip("p"), tone)
            for start in range(0, 4000, 1000):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1000]), format=fmt_a,
                                                layout="mono")
                af.sample_rate, af.pts = 8000, start
                out.mux(a.encode(af))
            out.mux(a.encode(None))
        if sub is not None:
            from av.subtitles.subtitle import SubtitleSet

            for k, t in enumerate((0, 120)):
                packet = sub.codec_context.encode_subtitle(SubtitleSet.create(f"{k},0,Default,,0,0,0,,Cue {k}".encode(),
                                                                              0, 80, pts=t))
                packet.stream, packet.time_base = sub, Fraction(1, 1000)
                packet.pts = packet.dts = t
                packet.duration = 80
                out.mux(packet)
    return rgb


def probe(path: Path) -> dict:
    """What a file holds: video frames (RGB as the file says, times, tags), audio packets."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"time_base": v.time_base, "rate": v.average_rate, "declared": v.frames,
                "duration": v.duration * v.time_base if v.duration else None, "audio": [], "times": [],
                "rgb": [], "rotation": None, "tags": None, "format": None, "subtitles": []}
        audio = c.streams.audio[0] if c.streams.audio else None
        subs = c.streams.subtitles[0] if c.streams.subtitles else None
        if subs is not None:
            info["subtitle_language"] = subs.metadata.get("language")
        for packet in c.demux(*(s for s in (v, audio, subs) if s is not None)):
            if packet.size == 0:
                continue
            if packet.stream is subs:
                info["subtitles"].append((packet.pts * packet.time_base, bytes(packet)))
                continue
            if packet.stream is audio:
                info["audio"].append((packet.pts * packet.time_base, bytes(packet)))
                continue
            for frame in packet.decode():
                _frame(info, frame, v.time_base)
        for frame in v.decode(None):
            _frame(info, frame, v.time_base)
    return info


def _frame(info: dict, frame, time_base: Fraction) -> None:
    info["times"].append(frame.pts * time_base)
    info["rgb"].append(frame.to_ndarray(format="rgb24"))
    info["rotation"] = frame.rotation
    info["tags"] = (int(frame.colorspace), int(frame.color_range))
    info["format"] = frame.format.name


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(["upscale", *args, "--quiet"])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files of atomic writes: none may stay after a failure."""
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# ----------------------------------------------------------------------------------- what is kept


def test_frames_timestamps_and_audio_are_kept(tmp_path, tiny):
    src, dst = tmp_path / "clip.mp4", tmp_path / "clip_x2.mp4"
    make_video(src, 7, audio="aac")
    assert reprfn.upscale_video(src, dst, scale=2, model=tiny) == dst
    a, b = probe(src), probe(dst)
    assert len(b["times"]) == len(a["times"]) == 7
    assert b["times"] == a["times"] and b["time_base"] == a["time_base"] and b["rate"] == a["rate"]
    assert b["duration"] == a["duration"]
    assert b["rgb"][0].shape == (48, 64, 3)
    assert len(b["audio"]) == len(a["audio"]) > 3
    assert b["audio"] == a["audio"]  # every packet: same time, same bytes


def test_subtitles_are_copied(tmp_path):
    src, dst = tmp_path / "s.mkv", tmp_path / "s_x2.mkv"
    make_video(src, 6, audio="aac", subtitle="subrip")
    reprfn.upscale_video(src, dst, scale=2, model=Nearest())
    a, b = probe(src), probe(dst)
    assert len(a["subtitles"]) == 2 and b["subtitles"] == a["subtitles"] and b["subtitle_language"] == "fra"
    assert b["audio"] == a["audio"] and b["times"] == a["times"]
    with pytest.raises(VideoError, match=r"subtitle stream #2 \(subrip\) cannot be copied into a \.mp4 file"):
        reprfn.upscale_video(src, tmp_path / "s_x2.mp4", scale=2, model=Nearest())


def test_variable_frame_rate_is_kept(tmp_path, tiny):
    src, dst = tmp_path / "vfr.mkv", tmp_path / "vfr_x2.mp4"
    pts = [0, 40, 120, 130, 300, 310, 500]  # milliseconds: gaps of 10 to 200 ms
    make_video(src, 7, pts=pts, time_base=Fraction(1, 1000))
    reprfn.upscale_video(src, dst, scale=2, model=tiny)
    assert probe(dst)["times"] == [Fraction(p, 1000) for p in pts]


def test_frames_equal_the_image_path(tmp_path, tiny):
    src, dst = tmp_path / "rgb.mkv", tmp_path / "rgb_x2.mkv"
    rgb = make_video(src, 5, codec="libx264rgb", pix_fmt="rgb24", crf=0)
    decoded = probe(src)["rgb"]
    assert all(np.array_equal(x, y) for x, y in zip(decoded, rgb, strict=True))  # the input is lossless
    reprfn.upscale_video(src, dst, scale=2, model=tiny, **LOSSLESS)
    got = probe(dst)["rgb"]
    assert len(got) == 5
    for frame, out in zip(rgb, got, strict=True):
        assert_close_levels(out, reprfn.upscale(frame, scale=2, model=tiny), max_fraction=0.01)


def test_x3_of_odd_sizes(tmp_path):
    src = tmp_path / "odd.mkv"
    make_video(src, 3, size=(9, 11), codec="libx264rgb", pix_fmt="rgb24", crf=0)
    reprfn.upscale_video(src, tmp_path / "rgb.mkv", scale=3, model=Nearest(3), **LOSSLESS)
    exact = probe(tmp_path / "rgb.mkv")["rgb"]
    assert exact[0].shape == (27, 33, 3)  # no chroma halving: the size is 3x the input
    reprfn.upscale_video(src, tmp_path / "420.mp4", scale=3, model=Nearest(3))
    padded = probe(tmp_path / "420.mp4")
    assert padded["rgb"][0].shape == (28, 34, 3) and padded["format"] == "yuv420p"  # one row and column repeated
    diff = np.abs(padded["rgb"][0][:27, :33].astype(int) - exact[0]).mean()
    assert diff < 4, diff  # the same picture, through 4:2:0


@pytest.mark.parametrize(("matrix", "full", "tag"), [("ITU709", False, 1), ("ITU709", True, 1),
                                                     ("ITU601", False, 6), (None, False, 6)])
def test_colour_matrix_and_range(tmp_path, matrix, full, tag):
    src, dst = tmp_path / "c.mp4", tmp_path / "c_x2.mp4"
    rgb = make_video(src, 2, pix_fmt="yuv444p", matrix=matrix, full=full, crf=0)
    reprfn.upscale_video(src, dst, scale=2, model=Nearest(), pix_fmt="yuv444p", crf=0)
    out = probe(dst)
    assert out["tags"] == (tag, 2 if full else 1)  # untagged SD input: decoded and tagged as BT.601
    read = matrix or guess_matrix(32, 24)
    with av.open(str(dst)) as c:
        frame = next(c.decode(video=0))
        pixels = frame.reformat(format="rgb24", src_colorspace=read, src_color_range="JPEG" if full else "MPEG",
                                dst_color_range="JPEG").to_ndarray()
    want = np.repeat(np.repeat(rgb[0], 2, axis=0), 2, axis=1)
    # two round trips through 8-bit YUV (swscale's full range drifts by up to 2 levels each); the
    # other matrix is off by tens of levels
    assert np.abs(pixels.astype(int) - want).max() <= 4
    wrong = "ITU601" if read == "ITU709" else "ITU709"
    with av.open(str(dst)) as c:
        off = next(c.decode(video=0)).reformat(format="rgb24", src_colorspace=wrong).to_ndarray()
    assert np.abs(off.astype(int) - want).max() > 10


def test_rotation_is_kept(tmp_path):
    src, dst = tmp_path / "r.mp4", tmp_path / "r_x2.mp4"
    make_video(src, 2, rotation=90)
    assert probe(src)["rotation"] == 90
    reprfn.upscale_video(src, dst, scale=2, model=Nearest())
    out = probe(dst)
    assert out["rotation"] == 90 and out["rgb"][0].shape == (48, 64, 3)  # the pixels are not rotated


# ------------------------------------------------------------------------------ the command line


def test_cli_single_video_and_mixed_folder(tmp_path, weights, capsys):
    make_video(tmp_path / "one.mp4", 3, audio="aac")
    code, err = cli(["-i", str(tmp_path / "one.mp4"), "-o", str(tmp_path / "one_x2.mkv"), "-w", str(weights),
                     "--crf", "30"], capsys)
    assert code == 0 and err == [], err
    assert probe(tmp_path / "one_x2.mkv")["rgb"][0].shape == (48, 64, 3)
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4", 2)
    make_video(folder / "b.webm", 2, codec="libvpx-vp9")
    from PIL import Image

    Image.fromarray(frames_rgb(1)[0]).save(folder / "c.png")
    code, err = cli(["-i", str(folder), "-o", str(tmp_path / "out"), "-w", str(weights), "--suffix", "_x2"], capsys)
    assert code == 0 and err == [], err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.mp4", "b_x2.mkv", "c_x2.png"]
    assert len(probe(tmp_path / "out" / "b_x2.mkv")["times"]) == 2


@pytest.mark.parametrize("damage", ["cut_mp4", "cut_mkv", "junk"])
def test_corrupt_or_truncated_video_is_one_line(tmp_path, weights, capsys, damage):
    good = tmp_path / ("g.mkv" if damage == "cut_mkv" else "g.mp4")
    make_video(good, 15, rate=10, audio="aac")  # 1.5 s
    if damage == "cut_mp4":  # the index at the front (as reprfn writes), the frames cut off
        reprfn.upscale_video(good, tmp_path / "fs.mp4", scale=2, model=Nearest())
        data = (tmp_path / "fs.mp4").read_bytes()
        data = data[: int(len(data) * 0.8)]
    elif damage == "cut_mkv":
        data = good.read_bytes()[: int(good.stat().st_size * 0.6)]
    else:
        data = good.read_bytes()[:100] + bytes(range(256)) * 20
    bad = tmp_path / f"bad{good.suffix}"
    bad.write_bytes(data)
    out = tmp_path / "out"
    code, err = cli(["-i", str(bad), "-o", str(out / f"bad_x2{good.suffix}"), "-w", str(weights)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"reprfn: error: {bad}: ") and ("corrupt" in err[0] or "truncated" in err[0]), err
    assert not (out / f"bad_x2{good.suffix}").exists() and leftovers(tmp_path) == []


def test_batch_goes_on_past_a_bad_video(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4", 2)
    (folder / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(500))
    make_video(folder / "c.mov", 2)
    code, err = cli(["-i", str(folder), "-o", str(tmp_path / "out"), "-w", str(weights)], capsys)
    assert code == 2 and len(err) == 1 and str(folder / "b.mp4") in err[0], err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "c.mov"]


def test_no_video_stream_is_refused(tmp_path, weights, capsys):
    src = tmp_path / "sound.mp4"
    with av.open(str(src), "w") as out:
        a = out.add_stream("aac", rate=8000)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 8000, 0
        out.mux(a.encode(af))
        out.mux(a.encode(None))
    code, err = cli(["-i", str(src), "-o", str(tmp_path / "o.mp4"), "-w", str(weights)], capsys)
    assert code == 2 and err == [f"reprfn: error: {src}: no video stream to upscale (it holds audio)"], err
    assert not (tmp_path / "o.mp4").exists()


def test_stream_the_container_cannot_hold_is_refused_before_work(tmp_path):
    src = tmp_path / "pcm.mkv"
    make_video(src, 2, audio="pcm_u8")  # unsigned 8-bit PCM: Matroska holds it, MP4 does not
    with pytest.raises(VideoError, match=r"audio stream #1 \(pcm_u8\) cannot be copied into a \.mp4 file; "
                                         r"write a \.mkv file instead"):
        reprfn.upscale_video(src, tmp_path / "o.mp4", scale=2, model=Nearest())
    assert not (tmp_path / "o.mp4").exists() and leftovers(tmp_path) == []
    reprfn.upscale_video(src, tmp_path / "o.mkv", scale=2, model=Nearest())
    assert len(probe(tmp_path / "o.mkv")["audio"]) == len(probe(src)["audio"]) > 0


def test_existing_output_is_not_overwritten_silently(tmp_path, weights, capsys):
    src, dst = tmp_path / "a.mp4", tmp_path / "a_x2.mp4"
    make_video(src, 2)
    dst.write_bytes(b"earlier")
    with pytest.raises(UsageError, match="exists; pass overwrite=True"):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest())
    assert dst.read_bytes() == b"earlier"
    code, _ = cli(["-i", str(src), "-o", str(dst), "-w", str(weights), "--skip-existing"], capsys)
    assert code == 0 and dst.read_bytes() == b"earlier"
    with pytest.raises(UsageError, match="would overwrite an input"):
        reprfn.upscale_video(src, src, scale=2, model=Nearest(), overwrite=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    code, _ = cli(["-i", str(bad), "-o", str(dst), "-w", str(weights)], capsys)
    assert code == 2 and dst.read_bytes() == b"earlier"  # a failed run leaves the earlier file
    code, _ = cli(["-i", str(src), "-o", str(dst), "-w", str(weights)], capsys)
    assert code == 0 and len(probe(dst)["times"]) == 2  # -o names what to write, as for images


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_failure_half_way_leaves_no_file(tmp_path, monkeypatch, failure):
    import reprfn.video.upscale as video_upscale

    src, dst = tmp_path / "a.mp4", tmp_path / "a_x2.mp4"
    make_video(src, 6)
    calls = []
    original = video_upscale.frame_upscaler

    def failing(net, **kw):
        run = original(net, **kw)

        def frame(rgb):
            calls.append(1)
            if len(calls) == 4:
                raise failure("stop")
            return run(rgb)
        return frame

    monkeypatch.setattr(video_upscale, "frame_upscaler", failing)
    with pytest.raises(failure):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest())
    assert len(calls) == 4 and not dst.exists() and leftovers(tmp_path) == []


def test_output_names_are_checked_before_work(tmp_path, weights, capsys):
    make_video(tmp_path / "a.mp4", 2)
    from PIL import Image

    Image.fromarray(frames_rgb(1)[0]).save(tmp_path / "p.png")
    for args, words in [
        (["-i", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "o.avi")], "cannot write .avi videos"),
        (["-i", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "o.png")], "the input is a video"),
        (["-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "o.mp4")], "but the input is an image"),
        (["-i", str(tmp_path / "a.mp4"), str(tmp_path / "p.png"), "-o", str(tmp_path / "o.mp4")], "several files"),
        (["-i", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "o.mp4"), "--codec", "nope"], "--codec nope"),
        (["-i", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "o.mp4"), "--crf", "99"], "--crf must be"),
    ]:
        code, err = cli([*args, "-w", str(weights)], capsys)
        assert code == 2 and len(err) == 1 and words in err[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "p.png"]


def test_without_pyav_one_line_says_how_to_install(tmp_path, weights, capsys, monkeypatch):
    make_video(tmp_path / "a.mp4", 2)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    code, err = cli(["-i", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "o.mp4"), "-w", str(weights)], capsys)
    assert code == 2 and len(err) == 1 and 'pip install "reprfn[video]"' in err[0], err
    assert not (tmp_path / "o.mp4").exists()
