"""Writes a synthetic Aff-Wild2 tree (see affjax/data/synthetic.py) and summarises it.

  pip install -e .   # once, so that affjax imports
  python tools/make_synthetic_affwild2.py --out /tmp/affwild2_synth --num_train 12 --seed 0

The summary is what affjax.data.affwild2 reads back: one line per name with its split, video
file, frame rate, frame count and what is missing or extra.
"""

import argparse
import inspect
import time

from affjax.data import affwild2, synthetic


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='folder to create (absent or empty)')
  for name, param in inspect.signature(synthetic.generate).parameters.items():
    if param.kind is param.KEYWORD_ONLY:
      parser.add_argument(f'--{name}', type=int, default=param.default,
                          help=f'default {param.default}')
  args = vars(parser.parse_args(argv))
  out = args.pop('out')
  start = time.perf_counter()
  root = synthetic.generate(out, **args)
  print(f'wrote {root} in {time.perf_counter() - start:.1f} s')
  for entry in affwild2.list_videos(root):
    video = affwild2.load_video(entry)
    off = {k: v for k, v in video.report.items() if k not in ('frames', 'annotated') and v}
    audio = entry.wav_path or entry.media_path
    print(f'{entry.split:10s} {entry.name:22s} {entry.media_path.relative_to(root)} '
          f'audio={audio.relative_to(root)} {video.fps:.5g} fps {video.num_frames} frames '
          + ' '.join(f'{k}={v}' for k, v in off.items()))


if __name__ == '__main__':
  main()
