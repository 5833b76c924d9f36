"""Media files the tests write: short H.264 clips of given frames."""

import av


def write_clip(path, frames, rate: int = 25):
  """Writes RGB uint8 frames (all 176x144, like the in-package clip) to an mp4, creating its folder."""
  path.parent.mkdir(parents=True)
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('libx264', rate=rate)
    stream.width, stream.height, stream.pix_fmt = 176, 144, 'yuv420p'
    for f in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format='rgb24')))
    out.mux(stream.encode())
