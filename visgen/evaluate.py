r"""ADM-compatible evaluator: metrics of a sample batch against a reference.

  python -m visgen.evaluate REF.npz SAMPLE.npz \
      [--feature-net=inception|digits|shapes] [--out=FILE.json]

Both files are ADM batches (`arr_0`: uint8 NHWC, any size, 1 or 3 channels;
see `visgen.evaluators.batch_io`). Images are resized by the chosen network:
Inception by the TF1 bilinear resize to 299x299 of the original graph (grey
repeated to RGB), trained nets by `classifier.prepare`. A reference batch's
precomputed `mu, sigma, mu_s, sigma_s` are used for FID/sFID when they belong
to the chosen network (ADM's files: Inception); precision, recall and KID
always use the reference `arr_0`.

Prints ADM's lines ("Inception Score: ...", "FID: ...", "sFID: ...",
"Precision: ...", "Recall: ...") plus "KID: ...". On a trained net every name
carries the net ("digits-FID: ...") and the real-against-real floor (the
net's dataset, train split vs test split, at the samples' resolution) is
printed beside it. `--out` writes JSON with the keys fid, sfid,
inception_score, precision, recall, kid (null where undefined for the net),
plus feature_net, names, num_ref, num_samples, floor, and class_accuracy
(trained nets, when the sample batch has visgen's `arr_1` labels).

Inputs are checked before any network runs: both files must be readable ADM
batches of the same image size and channels, and `--out`'s folder is created
first. A bad input prints one line (`error: ...`, exit 2; `--verbose` adds
the traceback); the JSON is written atomically.
"""

import argparse
import math
import sys

import numpy as np

from visgen import logging_lib
from visgen import validate
from visgen.evaluators import batch_io
from visgen.evaluators import compare
from visgen.evaluators import feature_nets


def evaluate(ref_path: str, sample_path: str, *,
             feature_net: str = 'inception') -> dict:
  """Returns the result dict that `--out` writes."""
  ref_images = batch_io.StreamingImages(ref_path)
  sample_images = batch_io.StreamingImages(sample_path)
  sample_images.check_matches(ref_images)
  net = feature_nets.get_feature_net(feature_net)
  ref = compare.gather(net, ref_images)
  ref.given_stats, ref.given_spatial_stats = batch_io.read_reference_stats(
      ref_path, feature_net)
  sample = compare.gather(net, sample_images)
  result = compare.metrics_between(ref, sample)
  result['class_accuracy'] = None
  with np.load(sample_path) as f:
    labels = f['arr_1'] if 'arr_1' in f.files else None
  if labels is not None and net.metric_prefix and len(labels) == len(
      sample_images):
    # visgen's class-conditional sample batches store the requested classes
    # in arr_1; the trained classifier says how many it recognises.
    pred = np.argmax(np.concatenate(sample.logits), -1)
    result['class_accuracy'] = float(np.mean(pred == labels))
  result.update(
      feature_net=feature_net,
      names=compare.display_names(net),
      num_ref=len(ref_images),
      num_samples=len(sample_images),
      ref_stats_precomputed=ref.given_stats is not None,
      floor=net.floor(sample_images.shape[1]),
  )
  return result


def _fmt(v) -> str:
  return 'undefined' if v is None or (isinstance(v, float) and math.isnan(v)
                                      ) else repr(v)


def print_result(result: dict, file=None) -> None:
  file = file or sys.stdout
  names = result['names']
  if result['feature_net'] != 'inception':
    print(f'Feature net: {result["feature_net"]} (these are not Inception '
          'metrics)', file=file)
  for key in compare.METRIC_KEYS:
    print(f'{names[key]}: {_fmt(result[key])}', file=file)
  if result.get('class_accuracy') is not None:
    print(f'{result["feature_net"]}-class accuracy: '
          f'{result["class_accuracy"]!r}', file=file)
  floor = result.get('floor')
  if floor:
    print(f'Real-against-real floor ({result["feature_net"]} train split '
          f'({floor["num_ref"]}) vs test split ({floor["num_samples"]})):',
          file=file)
    for key in compare.METRIC_KEYS:
      print(f'  {names[key]}: {_fmt(floor[key])}', file=file)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m visgen.evaluate', description=__doc__.split('\n')[0])
  parser.add_argument('ref_batch', help='reference batch .npz (arr_0)')
  parser.add_argument('sample_batch', help='sample batch .npz (arr_0)')
  parser.add_argument('--feature-net', '--feature_net', default='inception',
                      choices=feature_nets.FEATURE_NETS.names())
  parser.add_argument('--out', default=None, help='write metrics JSON here')
  parser.add_argument('--verbose', action='store_true',
                      help='show the traceback of errors')
  args = parser.parse_args(argv)

  def work():
    ref = validate.check_input_file(args.ref_batch, what='reference batch')
    sample = validate.check_input_file(args.sample_batch,
                                       what='sample batch')
    out = validate.check_output_file(args.out, flag='--out')  # Before work.
    result = evaluate(ref, sample, feature_net=args.feature_net)
    print_result(result)
    if out:
      logging_lib.write_json(out, result, indent=1, sort_keys=True)

  status = validate.run_cli(work, verbose=args.verbose)
  if status:
    raise SystemExit(status)


if __name__ == '__main__':
  main()
