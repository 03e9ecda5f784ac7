"""Video with PyAV: probe, plan chunks, decode exact frame ranges, encode parts, assemble.

Frames are numbered 0..N-1 in presentation order. The split step demuxes the video once (no
decoding but for the first frame) and writes a frame table: the timestamp of every frame and
which are keyframes. A chunk task then seeks to the keyframe at or before its first frame,
decodes forward, and keeps exactly the frames whose timestamps belong to its range: no frame is
dropped, doubled or reordered, whatever the GOP structure (B-frames, variable frame rate).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator

import av
import cv2
import numpy as np

from segq import limits, media
from segq.errors import InputError

#: Codecs an MP4 can carry as they are; other audio is re-encoded to AAC.
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "ac3", "eac3"}


@dataclass
class VideoInfo:
    frames: int
    fps_num: int
    fps_den: int
    width: int
    height: int
    rotation: int  # degrees, from the display matrix of the first frame
    codec: str
    audio: str  # audio codec name, "" when there is no audio track
    time_base_num: int
    time_base_den: int
    pts: list[int]  # presentation timestamps of every frame, in presentation order
    keyframes: list[int]  # frame indexes of keyframes

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "VideoInfo":
        return cls(**json.loads(data))

    def summary(self) -> dict:
        d = asdict(self)
        del d["pts"], d["keyframes"]
        d["fps"] = float(self.fps)
        d["keyframe_count"] = len(self.keyframes)
        return d


def _open(source: IO[bytes] | str | Path):
    try:
        return av.open(source if isinstance(source, (str, Path)) else source, mode="r")
    except av.error.FFmpegError:
        raise InputError(_explain(source)) from None


def _explain(source: IO[bytes] | str | Path) -> str:
    """Why FFmpeg could not open ``source``, in words (FFmpeg only says "Invalid data")."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return media.explain_unreadable_video(f, Path(source).stat().st_size)
    size = source.seek(0, io.SEEK_END)
    return media.explain_unreadable_video(source, size)


def probe(source: IO[bytes] | str | Path, max_frames: int, max_pixels: int) -> VideoInfo:
    """Frame table and properties of a video. Raises InputError for anything unusable."""
    with _open(source) as container:
        if not container.streams:
            raise InputError("the video has no frames (the file holds no streams)")
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise InputError(f"no video stream in the file (it holds {kinds})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise InputError("the video has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        limits.check_pixels(width, height, max_pixels, what="each frame")
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else ""
        stamps: list[tuple[int, bool]] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise InputError("the video has packets without timestamps")
                stamps.append((ts, packet.is_keyframe))
                if len(stamps) > max_frames:
                    raise InputError(f"the video has more than {max_frames} frames (SEGQ_MAX_VIDEO_FRAMES)")
        except av.error.FFmpegError as exc:
            raise InputError(f"corrupt video: {exc}") from None
        if not stamps:
            raise InputError("the video has no frames")
        if stream.frames and stream.frames != len(stamps):
            raise InputError(
                f"truncated or corrupt video: its index lists {stream.frames} frames, the file holds {len(stamps)}"
            )
        stamps.sort()
        if len({ts for ts, _ in stamps}) != len(stamps):
            raise InputError("the video has frames with duplicate timestamps")
        rotation = 0
        try:  # decode the first frame: proves the stream decodes, and gives the rotation
            container.seek(stamps[0][0], stream=stream, backward=True, any_frame=False)
            first = next(container.decode(stream))
            rotation = int(getattr(first, "rotation", 0) or 0)
        except (av.error.FFmpegError, StopIteration) as exc:
            raise InputError(f"corrupt video: the first frame does not decode ({exc})") from None
        return VideoInfo(
            frames=len(stamps),
            fps_num=rate.numerator,
            fps_den=rate.denominator,
            width=width,
            height=height,
            rotation=rotation,
            codec=stream.codec_context.name,
            audio=audio,
            time_base_num=stream.time_base.numerator,
            time_base_den=stream.time_base.denominator,
            pts=[ts for ts, _ in stamps],
            keyframes=[i for i, (_, key) in enumerate(stamps) if key],
        )


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (degrees counter-clockwise) to a decoded frame."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


#: Threads of each FFmpeg decoder and x264 encoder (0: the codec's own choice, every core of the
#: machine). A worker sets its share of the host's cores (``set_codec_threads``; workers.host.cpus).
CODEC_THREADS = 0


def set_codec_threads(n: int) -> None:
    """The threads each decoder and encoder of this process may run (0: the codec's own choice)."""
    global CODEC_THREADS
    CODEC_THREADS = max(0, int(n))


def decode_range(source: IO[bytes] | str | Path, info: VideoInfo, start: int, end: int) -> Iterator[np.ndarray]:
    """Exactly frames ``start..end-1`` as RGB arrays, in order. InputError if any is missing."""
    wanted = info.pts[start:end]
    if not wanted:
        return
    first, last = wanted[0], wanted[-1]
    expected = set(wanted)
    seen = 0
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if CODEC_THREADS:
            stream.thread_count = CODEC_THREADS
        try:
            if start > 0:
                container.seek(first, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < first:
                    continue
                if frame.pts > last:
                    break
                if frame.pts not in expected:
                    continue
                expected.discard(frame.pts)
                seen += 1
                yield upright(frame.to_ndarray(format="rgb24"), info.rotation)
                if frame.pts == last:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"corrupt video: frames {start}..{end - 1} do not decode ({exc})") from None
    if seen != len(wanted):
        raise InputError(
            f"corrupt or truncated video: decoded {seen} of the {len(wanted)} frames {start}..{end - 1}"
        )


def annotate_fps(rgb: np.ndarray, fps: float) -> np.ndarray:
    """The article's FPS text: red, top left."""
    cv2.putText(rgb, f"FPS: {fps:.1f}", (15, 25), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 0, 0), 2, cv2.LINE_AA)
    return rgb


def _even(rgb: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: odd ones get their last row/column repeated."""
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return rgb


_ENCODER: str | None = None


def h264_encoder() -> str:
    """``h264_nvenc`` when the FFmpeg inside PyAV has it and a GPU takes it (one test encode),
    else ``libx264``; decided once per process."""
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = "h264_nvenc" if _nvenc_works() else "libx264"
    return _ENCODER


def _nvenc_works() -> bool:
    if "h264_nvenc" not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((256, 256, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
        ctx.encode(frame)
        return True
    except Exception:  # no GPU, no driver, no free NVENC session
        return False


class PartEncoder:
    """H.264 (yuv420p, no B-frames) MP4 of RGB frames; timestamps = frame numbers.

    Chunk parts need one keyframe (the first); ``gop`` adds one every ``gop`` frames, for clips
    that are inputs (the demo, the benchmarks), so that chunk tasks can seek in them.
    """

    def __init__(self, path: Path, fps: Fraction, crf: int = 20, gop: int | None = None, codec: str | None = None):
        self.path, self.fps, self.crf, self.gop = path, fps, crf, gop
        self.codec = codec or h264_encoder()
        self.container = None
        self.stream = None
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        rgb = _even(rgb)
        if self.container is None:
            self.container = av.open(str(self.path), mode="w", format="mp4")
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.height, self.stream.width = rgb.shape[:2]
            self.stream.pix_fmt = "yuv420p"
            # No B-frames: decode order = presentation order, so parts join by renumbering.
            if self.codec == "libx264":
                self.stream.options = {"crf": str(self.crf), "preset": "veryfast", "bf": "0"}
                if CODEC_THREADS:
                    self.stream.options |= {"threads": str(CODEC_THREADS)}
            else:  # NVENC: constant quality, no B-frames
                self.stream.options = {"rc": "vbr", "cq": str(self.crf + 3), "preset": "p4", "bf": "0"}
            if self.gop:
                self.stream.options |= {"g": str(self.gop)}
            self.stream.codec_context.time_base = 1 / self.fps
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.count
        frame.time_base = 1 / self.fps
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> int:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
        return self.count


def assemble(parts: list[Path], fps: Fraction, out_path: Path, audio_source: IO[bytes] | None = None) -> int:
    """Join the parts (in order) into one faststart MP4 without re-encoding; copy (or re-encode to
    AAC) the audio of ``audio_source``. Returns the number of video frames written."""
    frame_time = 1 / fps
    written = 0
    with av.open(str(out_path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        with av.open(str(parts[0])) as first:
            vout = out.add_stream_from_template(first.streams.video[0])
        audio_in, aout, resample = None, None, False
        if audio_source is not None:
            audio_in = av.open(audio_source)
            if audio_in.streams.audio:
                ain = audio_in.streams.audio[0]
                if ain.codec_context.name in MP4_AUDIO:
                    aout = out.add_stream_from_template(ain)
                else:
                    aout = out.add_stream("aac", rate=ain.codec_context.sample_rate or 48000)
                    resample = True
        for part in parts:
            with av.open(str(part)) as src:
                vin = src.streams.video[0]
                count = 0
                for packet in src.demux(vin):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    index = round(packet.pts * vin.time_base / frame_time)
                    ts = round((written + index) * frame_time / vout.time_base)
                    packet.pts = packet.dts = ts
                    packet.stream = vout
                    out.mux(packet)
                    count += 1
                written += count
        if aout is not None:
            ain = audio_in.streams.audio[0]
            if resample:
                for frame in audio_in.decode(ain):
                    frame.pts = None
                    for packet in aout.encode(frame):
                        out.mux(packet)
                for packet in aout.encode():
                    out.mux(packet)
            else:
                for packet in audio_in.demux(ain):
                    if packet.size == 0 or packet.dts is None:
                        continue
                    packet.stream = aout
                    out.mux(packet)
        if audio_in is not None:
            audio_in.close()
    return written

