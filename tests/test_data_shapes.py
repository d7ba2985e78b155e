"""Tests for the procedural scene world: determinism and ground truth."""

import collections

import numpy as np
import pytest

from visgen.data import shapes
from visgen.data import shapes_edit
from visgen.data import shapes_motion
from visgen.data import shapes_world

N = 60  # examples checked per property; rendering is ~0.2 ms each


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_deterministic_per_seed_and_split():
  for cls in (shapes.ShapesSource, shapes_edit.ShapesEditSource,
              shapes_motion.ShapesVideoSource, shapes_world.ShapesWorldSource,
              shapes_motion.MovingDigitsSource):
    a, b = cls(split='train', seed=1), cls(split='train', seed=1)
    _equal(a[5], b[5])
    _equal(a[5], cls(split='train', seed=1)[5])  # not order dependent
    assert not np.array_equal(a[5]['image'], cls(split='train',
                                                 seed=2)[5]['image'])
    assert not np.array_equal(a[5]['image'], cls(split='test',
                                                 seed=1)[5]['image'])


def test_unknown_split():
  with pytest.raises(ValueError, match='train, test'):
    shapes.ShapesSource(split='val')


def test_masks_agree_with_pixels():
  src = shapes.ShapesSource(split='train', resolution=32)
  bg_colours = set()
  for i in range(N):
    ex, scene = src[i], src.scene(i)
    img, ids = ex['image'], ex['instance_mask'][..., 0]
    assert ex['image'].dtype == np.uint8 and img.shape == (32, 32, 3)
    for k, obj in enumerate(scene.objects):
      vis = ids == k + 1
      assert vis.sum() >= 4
      # Every visible pixel of object k has exactly its attribute colour.
      np.testing.assert_array_equal(
          img[vis], np.broadcast_to(shapes.COLOUR_VALUES[obj.colour],
                                    img[vis].shape))
      # The semantic mask is the shape class on the same pixels.
      assert (ex['semantic_mask'][..., 0][vis] == obj.shape + 1).all()
    # Background pixels never take an object colour.
    bg = img[ids == 0]
    bg_colours.update(map(tuple, bg))
    assert (ex['semantic_mask'][..., 0][ids == 0] == 0).all()
    # Label: shape of the object with the most visible pixels.
    counts = np.bincount(ids.ravel(), minlength=4)[1:len(scene.objects) + 1]
    assert ex['label'] == scene.objects[int(np.argmax(counts))].shape
  assert not bg_colours & set(map(tuple, shapes.COLOUR_VALUES))
  assert len(bg_colours) > 6  # gradients and several solid colours


def test_edges_are_instance_boundaries():
  ex = shapes.ShapesSource(split='test', num_objects=1)[0]
  ids = ex['instance_mask'][..., 0]
  edges = ex['edges'][..., 0] > 0
  inner = ids.copy()
  # Interior object pixels (all 4 neighbours inside) are not edges.
  pad = np.pad(ids, 1, mode='edge')
  same = ((pad[:-2, 1:-1] == ids) & (pad[2:, 1:-1] == ids)
          & (pad[1:-1, :-2] == ids) & (pad[1:-1, 2:] == ids))
  np.testing.assert_array_equal(edges, ~same)
  assert edges.any() and (inner[edges] == 1).any() and (inner[edges] == 0).any()


def test_captions_name_exactly_the_objects_present():
  src = shapes.ShapesSource(split='train')
  counts = collections.Counter()
  for i in range(N):
    ex, scene = src[i], src.scene(i)
    mentioned = shapes.parse_caption(str(ex['caption']))
    present = [(o.shape, o.colour, o.size) for o in scene.objects]
    assert mentioned == present, (ex['caption'], present)
    counts[len(present)] += 1
    # The 'objects' array and the attribute vector carry the same facts.
    objs = ex['objects']
    assert objs[:, 0].sum() == len(present)
    assert [tuple(r[[1, 2, 3]]) for r in objs[:len(present)]] == present
  assert set(counts) == {1, 2, 3}


def test_caption_relation_grammar():
  a = shapes.Obj(0, 0, 0, 5.0, 16.0)
  b = shapes.Obj(1, 2, 1, 25.0, 18.0)
  bg = shapes.Background(0, 0, 0.0)
  assert shapes.caption(shapes.Scene((a, b), bg)) == (
      'a small red circle left of a large blue square')
  c = shapes.Obj(2, 1, 0, 24.0, 2.0)
  assert shapes.caption(shapes.Scene((a, b, c), bg)) == (
      'a small red circle left of a large blue square, which is below a '
      'small green triangle')


def test_keypoints_lie_on_their_object():
  src = shapes.ShapesSource(split='train', resolution=64)
  for i in range(10):
    ex, scene = src[i], src.scene(i)
    for k, obj in enumerate(scene.objects):
      cov = shapes.coverage(obj, 64)
      centre = ex['keypoints'][k, 0]
      assert cov[int(centre[1]), int(centre[0])]
      assert ex['keypoint_valid'][k, :4].all()
      assert ex['keypoint_valid'][k, 4] == (shapes.SHAPES[obj.shape]
                                            != 'triangle')


def test_edit_changes_only_what_it_says():
  src = shapes_edit.ShapesEditSource(split='train')
  kinds = collections.Counter()
  for i in range(N):
    ex = src[i]
    scene, edited, k, kind, _ = src.scenes(i)
    kinds[kind] += 1
    changed = np.any(ex['image'] != ex['edited_image'], axis=-1)
    allowed = ex['edit_mask'][..., 0] > 0
    assert changed.any()
    assert not (changed & ~allowed).any()  # nothing outside the target moves
    before, after = ex['objects'], ex['edited_objects']
    others = [j for j in range(shapes.MAX_OBJECTS) if j != k]
    np.testing.assert_array_equal(before[others], after[others])
    attrs_b = ex['attributes'].reshape(shapes.MAX_OBJECTS, -1)
    attrs_a = ex['edited_attributes'].reshape(shapes.MAX_OBJECTS, -1)
    np.testing.assert_array_equal(attrs_b[others], attrs_a[others])
    field = {'recolour': 2, 'resize': 3}.get(kind)
    same = [f for f in (1, 2, 3) if f != field]
    np.testing.assert_array_equal(before[k, same], after[k, same])
    ob, oa = scene.objects[k], edited.objects[k]
    instr = str(ex['instruction'])
    assert shapes.SHAPES[ob.shape] in instr
    if kind == 'recolour':
      assert oa.colour != ob.colour
      assert instr.endswith(shapes.COLOUR_NAMES[oa.colour])
    elif kind == 'resize':
      assert instr.endswith(shapes.SIZES[oa.size]) and oa.size != ob.size
    else:
      dx, dy = oa.cx - ob.cx, oa.cy - ob.cy
      assert (dx, dy) != (0, 0) and dx * dy == 0
      want = ('to the right' if dx > 0 else 'to the left' if dx < 0
              else 'down' if dy > 0 else 'up')
      assert instr.endswith(want)
      assert (ob.shape, ob.colour, ob.size) == (oa.shape, oa.colour, oa.size)
  assert set(kinds) == set(shapes_edit.EDIT_TYPES)


def test_video_bounces_inside_and_matches_positions():
  src = shapes_motion.ShapesVideoSource(split='train', num_frames=12)
  ex, res = src[2], 32
  pos = ex['positions']
  n = int(ex['objects'][:, 0].sum())
  assert (pos[:, :n] >= 0).all() and (pos[:, :n] <= res).all()
  assert np.abs(np.diff(pos[:, :n], axis=0)).max() > 0  # things move
  # Reflection is exact: bounce() keeps [lo, hi] and mirrors at the ends.
  np.testing.assert_allclose(
      shapes_motion.bounce(np.float64(2), np.float64(3), np.arange(5), 0, 10),
      [2, 5, 8, 9, 6])
  np.testing.assert_array_equal(ex['image'], ex['video'][0])
  assert ex['video'].shape == (12, 32, 32, 3)


def test_world_actions_move_the_camera_exactly():
  src = shapes_world.ShapesWorldSource(split='train')
  ex = src[0]
  w = src.world(0)
  for t, a in enumerate(ex['actions']):
    cam = w.step(ex['camera'][t], a)
    np.testing.assert_array_equal(cam, ex['camera'][t + 1])
    np.testing.assert_array_equal(ex['video'][t + 1], w.view(cam))
  # Moving right by one step shifts the view left by `step_px` pixels.
  cam = np.array([0, 0])
  right = w.step(cam, shapes_world.ACTIONS.index('right'))
  np.testing.assert_array_equal(
      w.view(right)[:, :-w.step_px], w.view(cam)[:, w.step_px:])
  with pytest.raises(ValueError, match='Valid'):
    w.step(cam, 9)


def test_moving_digits_are_digits():
  src = shapes_motion.MovingDigitsSource(split='test', num_digits=1)
  ex = src[0]
  x, y = ex['positions'][0, 0]
  from visgen.data import digits  # pylint: disable=g-import-not-at-top

  imgs = digits.load_digits_split('test', size=16)
  patch = ex['video'][0, y:y + 16, x:x + 16, 0]
  match = [j for j in range(len(imgs['label']))
           if np.array_equal(imgs['image'][j, ..., 0], patch)]
  assert match and imgs['label'][match[0]] == ex['label']


def test_world_map_matches_reference_renderer():
  w = shapes_world.ShapesWorldSource(split='test').world(1)
  _, ids, _ = shapes.render_layers(w.scene, w.size, unit=w.resolution)
  sem = np.array([0] + [o.shape + 1 for o in w.scene.objects], np.uint8)
  np.testing.assert_array_equal(w.map_semantic, sem[ids])
  ref = shapes.render_layers(w.scene, w.size, unit=w.resolution)[0]
  np.testing.assert_array_equal(w.map_image, ref)
