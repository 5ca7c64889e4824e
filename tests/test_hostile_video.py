"""Hostile videos and video flags: every refusal is one line before any frame is upscaled, and
nothing is written; odd but valid inputs give a file that decodes whole. Clips are tiny (32x24, a
few frames) and made with PyAV in tmp_path; the model is nearest-neighbour (``test_video.Nearest``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

import reprfn
from reprfn.errors import ResourceError, UsageError

from .test_video import Nearest, cli, leftovers, make_video, probe, tiny, weights  # noqa: F401 - fixtures

av = pytest.importorskip("av")


def counting_upscaler(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the frames given to the model: a refusal "before any work" leaves it at 0."""
    import reprfn.video.upscale as video_upscale

    calls: list[int] = []
    original = video_upscale.frame_upscaler

    def counting(net, **kw):
        run = original(net, **kw)
        return lambda rgb: (calls.append(1), run(rgb))[1]

    monkeypatch.setattr(video_upscale, "frame_upscaler", counting)
    return calls


def lying_header(path: Path, width: int, height: int) -> None:
    """A 700-byte Matroska file whose raw video stream says ``width`` x ``height``: two 64-byte
    packets, so a decoder would allocate a huge frame before finding the data short."""
    with av.open(str(path), "w", format="matroska") as out:
        s = out.add_stream("rawvideo", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "gray"
        s.time_base = Fraction(1, 25)
        out.start_encoding()
        for i in range(2):
            packet = av.Packet(bytes(64))
            packet.stream, packet.pts, packet.dts, packet.time_base, packet.duration = s, i, i, Fraction(1, 25), 1
            out.mux(packet)


def test_huge_frames_are_refused_from_the_header(tmp_path, weights, capsys, monkeypatch):  # noqa: F811
    src, dst = tmp_path / "bomb.mkv", tmp_path / "o.mkv"
    lying_header(src, 16000, 16000)
    calls = counting_upscaler(monkeypatch)
    code, err = cli(["-i", str(src), "-o", str(dst), "-w", str(weights)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"reprfn: error: {src}: its 16000x16000 frames are 256,000,000 pixels, "
                             "over the limit"), err
    assert calls == [] and not dst.exists() and leftovers(tmp_path) == []


def test_max_pixels_and_memory_are_checked_before_any_frame(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.mp4", tmp_path / "o.mp4"
    make_video(src, 3)  # 32x24
    calls = counting_upscaler(monkeypatch)
    with pytest.raises(ResourceError, match=r"a\.mp4: its 32x24 frames are 768 pixels, over the limit of 700"):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest(), max_pixels=700)
    import reprfn.runtime.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 200_000)  # 200 KB: not one 64x48 frame
    with pytest.raises(ResourceError, match=r"a\.mp4: the x2 output would be 64x48 .* but 0 MB is available"):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest(), max_pixels=0)
    assert calls == [] and not dst.exists() and leftovers(tmp_path) == []


def test_a_codec_the_container_cannot_hold_is_one_line(tmp_path, weights, capsys):  # noqa: F811
    src = tmp_path / "a.mp4"
    make_video(src, 2)
    for dst, codec, words in [
        (tmp_path / "o.webm", "libx264", "a .webm file cannot hold libx264 video; write a .mp4 or .m4v or .mov or "
                                         ".mkv file or pass --codec libvpx-vp9"),
        (tmp_path / "o.mkv", "png", "a .mkv file cannot hold png video; write a .mp4 or .m4v or .mov file"),
    ]:
        code, err = cli(["-i", str(src), "-o", str(dst), "-w", str(weights), "--codec", codec], capsys)
        assert code == 2 and len(err) == 1 and words in err[0] and "internal error" not in err[0], err
        assert not dst.exists()
    assert leftovers(tmp_path) == []
    reprfn.upscale_video(src, tmp_path / "o.webm", scale=2, model=Nearest(), codec="libvpx-vp9")
    assert len(probe(tmp_path / "o.webm")["times"]) == 2


def test_crf_above_what_x264_takes_is_refused(tmp_path, weights, capsys):  # noqa: F811
    src = tmp_path / "a.mp4"
    make_video(src, 2)
    code, err = cli(["-i", str(src), "-o", str(tmp_path / "o.mp4"), "-w", str(weights), "--crf", "60"], capsys)
    assert code == 2 and err == ["reprfn: error: --crf 60: libx264 takes 0 to 51 (it would quietly use 51)"], err
    with pytest.raises(UsageError, match="crf 52: libx265 takes 0 to 51"):
        reprfn.upscale_video(src, tmp_path / "o.mkv", scale=2, model=Nearest(), codec="libx265", crf=52)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


@pytest.mark.parametrize("kind", ["gray", "yuv420p10le", "bgra", "repeated_pts", "odd_x3"])
def test_odd_but_valid_inputs_give_a_whole_video(tmp_path, kind):
    src, dst = tmp_path / "a.mkv", tmp_path / "o.mkv"
    size, scale = ((23, 31), 3) if kind == "odd_x3" else ((24, 32), 2)
    codec, pix = {"gray": ("ffv1", "gray"), "bgra": ("ffv1", "bgra"),
                  "yuv420p10le": ("libx264", "yuv420p10le")}.get(kind, ("libx264rgb", "rgb24"))
    make_video(src, 5, size=size, codec=codec, pix_fmt=pix, pts=[0, 1, 1, 2, 4] if kind == "repeated_pts" else None)
    reprfn.upscale_video(src, dst, scale=scale, model=Nearest(scale))
    info = probe(dst)
    assert len(info["rgb"]) == 5 and info["format"] == "yuv420p"
    assert info["rgb"][0].shape[:2] == (size[0] * scale + size[0] % 2, size[1] * scale + size[1] % 2)
    assert info["times"] == sorted(set(info["times"]))  # increasing: the repeated timestamp moved on


def test_an_image_under_a_video_name_is_refused(tmp_path, weights, capsys):  # noqa: F811
    """A PNG renamed .mp4 was upscaled as a one-frame H.264 video; now one line naming what it is,
    and a folder of videos goes on with the others."""
    from reprfn.export import sample_image

    fake = tmp_path / "in" / "photo.mp4"
    fake.parent.mkdir()
    fake.write_bytes(Path(sample_image()).read_bytes())
    make_video(tmp_path / "in" / "clip.mp4", 2)
    code, err = cli(["-i", str(fake), "-o", str(tmp_path / "o.mp4"), "-w", str(weights)], capsys)
    assert code == 2 and err == [f"reprfn: error: {fake}: a still image (PNG), not a video; rename it to .png "
                                 "to upscale it as an image"], err
    assert not (tmp_path / "o.mp4").exists() and leftovers(tmp_path) == []
    code, err = cli(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-w", str(weights)], capsys)
    assert code != 0 and any("photo.mp4: a still image" in line for line in err), err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize(("codec", "crf", "words"), [
    ("h264", 60, "--crf 60: h264 (libx264) takes 0 to 51 (it would quietly use 51)"),
    ("hevc", 55, "--crf 55: hevc (libx265) takes 0 to 51 (it would quietly use 51)"),
    ("libsvtav1", 0, "--crf 0: libsvtav1 takes 1 to 63 (it would quietly use its default)"),
])
def test_crf_limits_hold_whatever_name_the_encoder_is_given(tmp_path, weights, capsys, codec, crf, words):  # noqa: F811
    """``--codec h264 --crf 60`` wrote x264 at crf 51 with exit 0 (the cap was looked up by the name
    given, not the encoder it picks), ``--codec hevc`` failed after the model had loaded with x265's
    own text, and SVT-AV1 read ``--crf 0`` as "not set", writing its default crf 35."""
    src, dst = tmp_path / "a.mp4", tmp_path / "o.mkv"
    make_video(src, 2)
    code, err = cli(["-i", str(src), "-o", str(dst), "-w", str(weights), "--codec", codec, "--crf", str(crf)], capsys)
    assert code == 2 and err == [f"reprfn: error: {words}"], err
    assert not dst.exists() and leftovers(tmp_path) == []
    with pytest.raises(UsageError, match=words.replace("--crf", "crf").replace("(", r"\(").replace(")", r"\)")):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest(), codec=codec, crf=crf)


@pytest.mark.parametrize("max_pixels", [-5, 1.5, True, "100"])
def test_a_max_pixels_that_is_no_limit_is_refused_before_any_work(tmp_path, monkeypatch, max_pixels):
    """``max_pixels=-5`` loaded the model and then refused the video as "768 pixels, over the limit
    of -5"; ``1.5`` and ``True`` did the same (``"100"`` failed with a TypeError)."""
    src, dst = tmp_path / "a.mp4", tmp_path / "o.mp4"
    make_video(src, 2)
    calls = counting_upscaler(monkeypatch)
    with pytest.raises(UsageError, match=r"^max_pixels must be a whole number of pixels, 0 for no limit, or None"):
        reprfn.upscale_video(src, dst, scale=2, model=Nearest(), max_pixels=max_pixels)
    assert calls == [] and not dst.exists() and leftovers(tmp_path) == []


def test_an_unknown_codec_is_refused_once_before_the_batch(tmp_path, weights, capsys):  # noqa: F811
    """It failed on each video alone, one identical line per video, after the model had loaded."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4", 2)
    make_video(folder / "b.mp4", 2)
    code, err = cli(["-i", str(folder), "-o", str(tmp_path / "out"), "-w", str(weights), "--codec", "nosuch"], capsys)
    assert code == 2 and err == ["reprfn: error: --codec nosuch: no such video encoder in PyAV's FFmpeg "
                                 "(try libx264, libx265, libvpx-vp9, libsvtav1, ffv1)"], err
    assert not (tmp_path / "out").exists()
