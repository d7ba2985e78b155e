r"""Markdown table of `visgen.bench --peer` results (JSON files).

  python benchmarks/peer_table.py benchmarks/results/peer_*.json \
      > benchmarks/results/peer.md
"""

import json
import sys


def row(r: dict) -> str:
  m = r['model']
  name = m['name'] + (f" d{m['depth']} w{m['width']}" if m['name'] == 'dit'
                      else f" ch{m['model_channels']}")
  s = (f"{r['sample_images_per_s']:.2f} / {r['peer_sample_images_per_s']:.2f}"
       if 'sample_images_per_s' in r else '-')
  return (f"| {name} | {r['precision']} | {r['peer']['name']} | "
          f"{r['params']} / {r['peer_params']} | "
          f"{r['step_s']:.3f} ({r['fastest_step_s']:.3f}) | "
          f"{r['peer_step_s']:.3f} ({r['peer_fastest_step_s']:.3f}) | "
          f"{r['ratio']:.2f} | {r['peak_rss_gib']:.2f} / "
          f"{r['peer_peak_rss_gib']:.2f} | {s} | "
          f"{r['loadavg'][0]:.1f} / {r['loadavg_end'][0]:.1f} |")


def main(paths: list[str]) -> str:
  lines = [
      '| model | precision | peer | params visgen / peer | visgen s/step '
      'median (fastest) | peer s/step median (fastest) | ratio visgen/peer '
      '| peak RSS GiB visgen / peer | sampling img/s visgen / peer | '
      'load avg start / end |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for p in paths:
    with open(p) as f:
      lines.append(row(json.load(f)))
  return '\n'.join(lines)


if __name__ == '__main__':
  print(main(sys.argv[1:]))
