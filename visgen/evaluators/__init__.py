"""Evaluation: ADM-compatible metrics, feature networks, in-loop evaluation.

Modules:
  frechet, manifold, scores   metrics (FID/sFID, precision/recall, IS, KID)
  inception, convert_inception  FID Inception port and weight conversion
  classifier, feature_nets    feature nets trained here (digits, shapes)
  compare, batch_io           metrics between image sets; ADM .npz batches
  datasets                    uint8 splits of registered datasets
  make_reference              reference batch CLI (`visgen.evaluate` scores)
  in_loop                     evaluator for the training loop
  bits_per_dim                nats -> bits/dim with the dequantisation offset
"""
