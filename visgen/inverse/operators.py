"""Linear degradation operators H with their singular value decompositions.

DDRM (Kawar et al. 2022, "Denoising Diffusion Restoration Models") and
Pi-GDM (Song et al. 2023) need H = U diag(s) V^T applied as functions, never
as dense (D x D) matrices for images. Every operator here exposes

  H(x), Ht(y)              the degradation and its adjoint,
  Vt(x), V(z)              the right singular basis (orthogonal, D x D),
  Ut(y), U(z)              the left singular basis (orthogonal, m x m),
  singulars                the singular values, in the *spectral layout*,
  H_pinv(y)                the pseudo-inverse V diag(1/s) U^T y,

on batches: x is (B, *x_shape) with x_shape = (H, W, C), y is
(B, *y_shape). The spectral layout is a flat (B, D) array, D = prod(x_shape)
(the layout of V^T x); `support` (D,) marks the m = prod(y_shape) positions
that carry a singular value (U^T y is embedded there, zeros elsewhere) and
`singulars` (D,) holds s there and 0 elsewhere. So H = U(singulars * Vt(x))
and DDRM reads its three cases from (support, singulars) directly; unlike the
reference code, the singular values need not be sorted.

Operators (all exact; the tests compare them with dense matrices):
  * `Identity` (denoising): U = V = I, s = 1.
  * `Inpainting` (a keep-mask; `random_pixels`, `box` build masks): y is the
    kept entries; V^T is the permutation [kept, missing], s = 1 on kept.
  * `Separable(A_h, A_w)`: y[i, j, c] = sum_{h, w} A_h[i, h] A_w[j, w]
    x[h, w, c]; H = A_h (x) A_w (x) I_C, so its SVD is the Kronecker product
    of the two 1-D SVDs (numpy, once, on n x n matrices). Built on it:
    `AveragePool` (super-resolution by block averaging, its SVD in closed
    form: s = 1/sqrt(f) per axis, U = I, V = block constants then the DCT-II
    basis inside each block), `Bicubic` (super-resolution with the Keys
    bicubic kernel, a = -0.5), `Deblur` (Gaussian or uniform 1-D kernels,
    'same' size, zero padding).
  * `Colorization`: y = mean of the 3 channels; per pixel H = (1,1,1)/3 with
    s = 1/sqrt(3), V = an orthogonal 3 x 3 whose first column is
    (1,1,1)/sqrt(3).

Shapes are static (numpy), so an operator is a constant of any jitted
function that closes over it.
"""

import math

import jax.numpy as jnp
import numpy as np

from visgen.validate import UserError


def _shape3(x_shape, name):
  x_shape = tuple(int(v) for v in x_shape)
  if len(x_shape) != 3 or min(x_shape) < 1:
    raise UserError(f'{name}: x_shape must be (height, width, channels), got '
                    f'{x_shape}. For a flat vector of D values use '
                    '(D, 1, 1).')
  return x_shape


class Operator:
  """Base class: subclasses set x_shape, y_shape, singulars, support and
  implement H, Ht, Vt, V, Ut, U (see the module docstring)."""

  name = 'operator'
  x_shape: tuple
  y_shape: tuple

  @property
  def dim(self) -> int:
    return math.prod(self.x_shape)

  @property
  def y_dim(self) -> int:
    return math.prod(self.y_shape)

  # ---- validation ----------------------------------------------------------
  def check_x(self, x):
    if tuple(x.shape[1:]) != tuple(self.x_shape):
      raise UserError(
          f'Operator {self.name!r} was built for images of shape '
          f'{self.x_shape} (height, width, channels) but got a batch of shape '
          f'{tuple(x.shape)}, i.e. images of shape {tuple(x.shape[1:])}. '
          f'Build the operator with x_shape={tuple(x.shape[1:])} or resize '
          'the images.')

  def check_y(self, y):
    if tuple(y.shape[1:]) != tuple(self.y_shape):
      raise UserError(
          f'Operator {self.name!r} gives measurements of shape '
          f'{self.y_shape} but got a batch of shape {tuple(y.shape)}. Pass '
          f'y = op.H(x) for images x of shape {self.x_shape}.')

  # ---- derived maps --------------------------------------------------------
  def H_via_svd(self, x):
    """U diag(s) V^T x (equal to H(x); the tests check it)."""
    return self.U(self.singulars * self.Vt(x))

  def H_pinv(self, y):
    """The pseudo-inverse H^+ y = V diag(1/s) U^T y (1/0 := 0)."""
    s = self.singulars
    inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
    return self.V(inv * self.Ut(y))

  def __repr__(self):
    return (f'{type(self).__name__}({self.name!r}, x_shape={self.x_shape}, '
            f'y_shape={self.y_shape})')


# ---------------------------------------------------------------------------
class Identity(Operator):
  """Denoising: H = I."""

  name = 'denoise'

  def __init__(self, x_shape):
    self.x_shape = self.y_shape = _shape3(x_shape, 'Identity')
    self.singulars = jnp.ones((self.dim,), jnp.float32)
    self.support = np.ones((self.dim,), bool)

  def H(self, x):
    self.check_x(x)
    return x

  def Ht(self, y):
    self.check_y(y)
    return y

  def Vt(self, x):
    return x.reshape(x.shape[0], -1)

  def V(self, z):
    return z.reshape((z.shape[0],) + self.x_shape)

  def Ut(self, y):
    return y.reshape(y.shape[0], -1)

  def U(self, z):
    return z.reshape((z.shape[0],) + self.y_shape)


# ---------------------------------------------------------------------------
class Inpainting(Operator):
  """Inpainting: y = the entries of x where `keep` is True (flat order).

  Args:
    x_shape: (H, W, C).
    keep: boolean mask of shape (H, W), (H, W, 1) or (H, W, C); a pixel mask
      keeps or drops all channels of a pixel.
  """

  name = 'inpaint'

  def __init__(self, x_shape, keep):
    self.x_shape = _shape3(x_shape, 'Inpainting')
    keep = np.asarray(keep, bool)
    if keep.ndim == 2:
      keep = keep[..., None]
    try:
      keep = np.broadcast_to(keep, self.x_shape)
    except ValueError:
      raise UserError(
          f'Inpainting: the mask has shape {keep.shape} but the images are '
          f'{self.x_shape}; give a mask of shape (H, W), (H, W, 1) or '
          f'(H, W, C) = {self.x_shape}.') from None
    flat = keep.reshape(-1)
    if not flat.any():
      raise UserError('Inpainting: the mask keeps no pixel; keep at least '
                      'one (True = observed).')
    self.keep = keep
    self.kept = np.flatnonzero(flat)
    self.perm = np.concatenate([self.kept, np.flatnonzero(~flat)])
    self.inv_perm = np.argsort(self.perm)
    m = self.kept.size
    self.y_shape = (m,)
    self.support = np.arange(self.dim) < m
    self.singulars = jnp.asarray(self.support, jnp.float32)

  def H(self, x):
    self.check_x(x)
    return x.reshape(x.shape[0], -1)[:, self.kept]

  def Ht(self, y):
    self.check_y(y)
    out = jnp.zeros((y.shape[0], self.dim), y.dtype).at[:, self.kept].set(y)
    return out.reshape((y.shape[0],) + self.x_shape)

  def Vt(self, x):
    return x.reshape(x.shape[0], -1)[:, self.perm]

  def V(self, z):
    return z[:, self.inv_perm].reshape((z.shape[0],) + self.x_shape)

  def Ut(self, y):
    pad = jnp.zeros((y.shape[0], self.dim - self.y_dim), y.dtype)
    return jnp.concatenate([y, pad], axis=1)

  def U(self, z):
    return z[:, :self.y_dim]

  def masked_image(self, y, fill=0.0):
    """y shown as an image: observed entries, `fill` elsewhere."""
    out = jnp.full((y.shape[0], self.dim), fill, y.dtype)
    return out.at[:, self.kept].set(y).reshape((y.shape[0],) + self.x_shape)


def random_pixels(x_shape, *, missing: float, seed: int = 0) -> np.ndarray:
  """A (H, W) keep-mask dropping a fraction `missing` of the pixels."""
  h, w = _shape3(x_shape, 'random_pixels')[:2]
  if not 0.0 <= missing < 1.0:
    raise UserError(f'random_pixels: missing={missing} must be in [0, 1).')
  rng = np.random.default_rng(seed)
  n_drop = int(round(missing * h * w))
  keep = np.ones(h * w, bool)
  keep[rng.permutation(h * w)[:n_drop]] = False
  return keep.reshape(h, w)


def box(x_shape, *, top: int, left: int, height: int, width: int
        ) -> np.ndarray:
  """A (H, W) keep-mask dropping the box [top, top+height) x [left, ...)."""
  h, w = _shape3(x_shape, 'box')[:2]
  if not (0 <= top and 0 <= left and height > 0 and width > 0
          and top + height <= h and left + width <= w):
    raise UserError(
        f'box: the box rows {top}..{top + height - 1}, columns '
        f'{left}..{left + width - 1} does not fit in a {h}x{w} image; pick '
        'top + height <= H and left + width <= W.')
  keep = np.ones((h, w), bool)
  keep[top:top + height, left:left + width] = False
  return keep


# ---------------------------------------------------------------------------
def _svd_1d(a):
  """(U m x m, s (m,), V n x n) of a 1-D matrix with m <= n, float64."""
  a = np.asarray(a, np.float64)
  m, n = a.shape
  if m > n:
    raise UserError(f'A separable factor must not have more rows than '
                    f'columns (an upsampling); got {a.shape}.')
  u, s, vt = np.linalg.svd(a, full_matrices=True)
  return u, s, vt.T


class Separable(Operator):
  """y = A_h x A_w^T per channel: H = A_h (x) A_w (x) I_C.

  The SVD is the Kronecker product of the 1-D SVDs A = U_a diag(s_a) V_a^T:
  V^T x applies V_h^T along the rows and V_w^T along the columns (the layout
  is (n_h, n_w, C) flattened), s[a, b] = s_h[a] s_w[b] for a < m_h, b < m_w
  (the support) and 0 elsewhere; U^T y applies U_h^T, U_w^T to y
  (m_h, m_w, C) and embeds it in the top-left corner of the layout.

  Args:
    x_shape: (H, W, C).
    a_h, a_w: the 1-D matrices (m_h x H, m_w x W), m <= n.
    svd_h, svd_w: optional precomputed (U, s, V) of a_h / a_w (closed forms).
  """

  name = 'separable'

  def __init__(self, x_shape, a_h, a_w, *, svd_h=None, svd_w=None):
    self.x_shape = _shape3(x_shape, type(self).__name__)
    h, w, c = self.x_shape
    a_h, a_w = np.asarray(a_h, np.float64), np.asarray(a_w, np.float64)
    if a_h.shape[1] != h or a_w.shape[1] != w:
      raise UserError(f'{type(self).__name__}: the 1-D factors act on '
                      f'{a_h.shape[1]} rows and {a_w.shape[1]} columns but '
                      f'x_shape is {self.x_shape}.')
    uh, sh, vh = svd_h if svd_h is not None else _svd_1d(a_h)
    uw, sw, vw = svd_w if svd_w is not None else _svd_1d(a_w)
    mh, mw = a_h.shape[0], a_w.shape[0]
    self.y_shape = (mh, mw, c)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    self.a_h, self.a_w = f32(a_h), f32(a_w)
    self.u_h, self.u_w, self.v_h, self.v_w = f32(uh), f32(uw), f32(vh), f32(vw)
    sing = np.zeros((h, w, c))
    sing[:mh, :mw, :] = (np.asarray(sh)[:, None] * np.asarray(sw)[None, :]
                         )[:, :, None]
    supp = np.zeros((h, w, c), bool)
    supp[:mh, :mw, :] = True
    self.support = supp.reshape(-1)
    self.singulars = f32(sing.reshape(-1))
    self._svd_np = (a_h, a_w, (uh, sh, vh), (uw, sw, vw))

  def H(self, x):
    self.check_x(x)
    return jnp.einsum('ih,jw,nhwc->nijc', self.a_h, self.a_w, x)

  def Ht(self, y):
    self.check_y(y)
    return jnp.einsum('ih,jw,nijc->nhwc', self.a_h, self.a_w, y)

  def Vt(self, x):
    z = jnp.einsum('ha,wb,nhwc->nabc', self.v_h, self.v_w, x)
    return z.reshape(z.shape[0], -1)

  def V(self, z):
    z = z.reshape((z.shape[0],) + self.x_shape)
    return jnp.einsum('ha,wb,nabc->nhwc', self.v_h, self.v_w, z)

  def Ut(self, y):
    h, w, _ = self.x_shape
    mh, mw, _ = self.y_shape
    z = jnp.einsum('ia,jb,nijc->nabc', self.u_h, self.u_w, y)
    z = jnp.pad(z, ((0, 0), (0, h - mh), (0, w - mw), (0, 0)))
    return z.reshape(z.shape[0], -1)

  def U(self, z):
    mh, mw, _ = self.y_shape
    z = z.reshape((z.shape[0],) + self.x_shape)[:, :mh, :mw]
    return jnp.einsum('ia,jb,nabc->nijc', self.u_h, self.u_w, z)


def _factors(factor):
  if isinstance(factor, (tuple, list)):
    if len(factor) != 2:
      raise UserError(f'factor must be an int or (f_h, f_w), got {factor}.')
    return int(factor[0]), int(factor[1])
  return int(factor), int(factor)


def _check_divides(name, x_shape, fh, fw):
  h, w, _ = x_shape
  if fh < 1 or fw < 1:
    raise UserError(f'{name}: the scale factor must be >= 1, got '
                    f'({fh}, {fw}).')
  if h % fh or w % fw:
    near = lambda n, f: f'{(n // f) * f} or {(n // f + 1) * f}'
    raise UserError(
        f'{name}: x{fh if fh == fw else (fh, fw)} does not divide the image '
        f'size {h}x{w} (height % {fh} = {h % fh}, width % {fw} = {w % fw}). '
        f'Crop or resize the images to a multiple of the factor (height '
        f'{near(h, fh)}, width {near(w, fw)}) or use a factor that divides '
        'the size.')


def _dct_block(f):
  """An orthogonal f x f matrix whose columns are the DCT-II basis; column 0
  is the constant 1/sqrt(f)."""
  j = np.arange(f)[:, None]
  k = np.arange(f)[None, :]
  m = np.cos(np.pi * (2 * j + 1) * k / (2 * f))
  m[:, 0] *= 1.0 / math.sqrt(f)
  m[:, 1:] *= math.sqrt(2.0 / f)
  return m


def pool_matrix(n, f):
  """The (n/f) x n block-averaging matrix."""
  return np.kron(np.eye(n // f), np.full((1, f), 1.0 / f))


def pool_svd(n, f):
  """Closed-form SVD of `pool_matrix(n, f)`: A A^T = I / f, so U = I,
  s = 1/sqrt(f); V's first n/f columns are the block indicators / sqrt(f)
  (= sqrt(f) A^T), the others the non-constant DCT-II vectors of each block
  (orthogonal to the constants)."""
  m = n // f
  d = _dct_block(f)
  v = np.zeros((n, n))
  for i in range(m):
    rows = slice(i * f, (i + 1) * f)
    v[rows, i] = d[:, 0]
    for k in range(1, f):
      v[rows, m + i * (f - 1) + (k - 1)] = d[:, k]
  return np.eye(m), np.full((m,), 1.0 / math.sqrt(f)), v


class AveragePool(Separable):
  """Super-resolution by f x f average pooling (closed-form SVD)."""

  name = 'sr_pool'

  def __init__(self, x_shape, factor):
    x_shape = _shape3(x_shape, 'AveragePool')
    fh, fw = _factors(factor)
    _check_divides(f'AveragePool (super-resolution by average pooling)',
                   x_shape, fh, fw)
    h, w, _ = x_shape
    super().__init__(x_shape, pool_matrix(h, fh), pool_matrix(w, fw),
                     svd_h=pool_svd(h, fh), svd_w=pool_svd(w, fw))
    self.factor = (fh, fw)
    self.name = f'sr_pool_x{fh}' if fh == fw else f'sr_pool_x{fh}x{fw}'


def _keys_cubic(x, a=-0.5):
  x = np.abs(x)
  return np.where(
      x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
      np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def bicubic_matrix(n, f, a=-0.5):
  """The (n/f) x n antialiased bicubic downsampling matrix (Keys kernel
  stretched by f, as PIL / Matlab imresize; output pixel i centred at
  (i + 0.5) f - 0.5; weights truncated at the border and renormalised)."""
  m = n // f
  out = np.zeros((m, n))
  for i in range(m):
    centre = (i + 0.5) * f - 0.5
    j = np.arange(n)
    wts = _keys_cubic((j - centre) / f, a)
    out[i] = wts / wts.sum()
  return out


class Bicubic(Separable):
  """Super-resolution with bicubic downsampling by f (SVD per axis)."""

  name = 'sr_bicubic'

  def __init__(self, x_shape, factor):
    x_shape = _shape3(x_shape, 'Bicubic')
    fh, fw = _factors(factor)
    _check_divides('Bicubic (super-resolution by bicubic downsampling)',
                   x_shape, fh, fw)
    h, w, _ = x_shape
    super().__init__(x_shape, bicubic_matrix(h, fh) if fh > 1 else np.eye(h),
                     bicubic_matrix(w, fw) if fw > 1 else np.eye(w))
    self.factor = (fh, fw)
    self.name = f'sr_bicubic_x{fh}' if fh == fw else f'sr_bicubic_x{fh}x{fw}'


def conv_matrix(n, kernel):
  """The n x n matrix of 'same' 1-D correlation with `kernel` (odd length),
  zero padding."""
  kernel = np.asarray(kernel, np.float64)
  k = kernel.size
  if k % 2 == 0:
    raise UserError(f'Deblur: the kernel needs an odd length, got {k}.')
  out = np.zeros((n, n))
  for i in range(n):
    for t in range(k):
      j = i + t - k // 2
      if 0 <= j < n:
        out[i, j] = kernel[t]
  return out


def gaussian_kernel(std, radius=None):
  radius = int(math.ceil(3 * std)) if radius is None else int(radius)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / std) ** 2)
  return k / k.sum()


class Deblur(Separable):
  """Deblurring with a separable kernel: 'gaussian' (std) or 'uniform'
  (size, odd); the same 1-D kernel along rows and columns."""

  def __init__(self, x_shape, *, kind='gaussian', std=1.0, size=3):
    x_shape = _shape3(x_shape, 'Deblur')
    if kind == 'gaussian':
      if not std > 0:
        raise UserError(f'Deblur: std must be > 0, got {std}.')
      kernel = gaussian_kernel(std)
      self.name = f'deblur_gauss{std:g}'
    elif kind == 'uniform':
      if size < 1 or size % 2 == 0:
        raise UserError(f'Deblur: the uniform kernel size must be odd and '
                        f'>= 1, got {size}.')
      kernel = np.full((size,), 1.0 / size)
      self.name = f'deblur_uniform{size}'
    else:
      raise UserError(f"Deblur: unknown kind {kind!r}: 'gaussian', "
                      "'uniform'.")
    h, w, _ = x_shape
    super().__init__(x_shape, conv_matrix(h, kernel), conv_matrix(w, kernel))
    self.kernel = kernel


# ---------------------------------------------------------------------------
def _colour_basis():
  """Orthogonal 3 x 3 with first column (1, 1, 1) / sqrt(3)."""
  return np.stack([np.full(3, 1 / math.sqrt(3)),
                   np.array([1.0, -1.0, 0.0]) / math.sqrt(2),
                   np.array([1.0, 1.0, -2.0]) / math.sqrt(6)], axis=1)


class Colorization(Operator):
  """Colourisation: y = the mean of the 3 channels (H, W, 1)."""

  name = 'colorize'

  def __init__(self, x_shape):
    self.x_shape = _shape3(x_shape, 'Colorization')
    h, w, c = self.x_shape
    if c != 3:
      raise UserError(f'Colorization needs 3-channel images, got x_shape '
                      f'{self.x_shape}.')
    self.y_shape = (h, w, 1)
    self.m = jnp.asarray(_colour_basis(), jnp.float32)
    supp = np.zeros((h, w, 3), bool)
    supp[..., 0] = True
    self.support = supp.reshape(-1)
    self.singulars = jnp.asarray(supp.reshape(-1) / math.sqrt(3), jnp.float32)

  def H(self, x):
    self.check_x(x)
    return jnp.mean(x, axis=-1, keepdims=True)

  def Ht(self, y):
    self.check_y(y)
    return jnp.broadcast_to(y / 3.0, y.shape[:-1] + (3,))

  def Vt(self, x):
    return (x @ self.m).reshape(x.shape[0], -1)

  def V(self, z):
    return z.reshape((z.shape[0],) + self.x_shape) @ self.m.T

  def Ut(self, y):
    z = jnp.concatenate([y, jnp.zeros(y.shape[:-1] + (2,), y.dtype)], -1)
    return z.reshape(z.shape[0], -1)

  def U(self, z):
    return z.reshape((z.shape[0],) + self.x_shape)[..., :1]


# ---------------------------------------------------------------------------
def dense(op: Operator, fn: str = 'H') -> np.ndarray:
  """The dense matrix of one of op's maps (tests and tiny problems only):
  'H' (m x D), 'Ht' (D x m), 'V' (D x D, columns = V's), 'U' (m x m, the
  support columns), 'pinv' (D x m)."""
  d, m = op.dim, op.y_dim
  if fn in ('H',):
    e = jnp.eye(d, dtype=jnp.float32).reshape((d,) + op.x_shape)
    return np.asarray(op.H(e)).reshape(d, m).T
  if fn == 'V':
    return np.asarray(op.V(jnp.eye(d, dtype=jnp.float32))).reshape(d, d).T
  e_y = jnp.eye(m, dtype=jnp.float32).reshape((m,) + op.y_shape)
  if fn == 'Ht':
    return np.asarray(op.Ht(e_y)).reshape(m, d).T
  if fn == 'pinv':
    return np.asarray(op.H_pinv(e_y)).reshape(m, d).T
  if fn == 'U':
    z = np.zeros((m, d), np.float32)
    z[np.arange(m), np.flatnonzero(op.support)] = 1.0
    return np.asarray(op.U(jnp.asarray(z))).reshape(m, m).T
  raise ValueError(f'dense: unknown map {fn!r}.')


def build(name: str, x_shape, **kwargs) -> Operator:
  """An operator by name: 'denoise', 'inpaint_random' (missing=, seed=),
  'inpaint_box' (top=, left=, height=, width=), 'sr_pool' (factor=),
  'sr_bicubic' (factor=), 'deblur_gaussian' (std=), 'deblur_uniform'
  (size=), 'colorize'."""
  if name == 'denoise':
    return Identity(x_shape)
  if name == 'inpaint_random':
    op = Inpainting(x_shape, random_pixels(x_shape, **kwargs))
    op.name = 'inpaint_random'
    return op
  if name == 'inpaint_box':
    op = Inpainting(x_shape, box(x_shape, **kwargs))
    op.name = 'inpaint_box'
    return op
  if name == 'sr_pool':
    return AveragePool(x_shape, **kwargs)
  if name == 'sr_bicubic':
    return Bicubic(x_shape, **kwargs)
  if name == 'deblur_gaussian':
    return Deblur(x_shape, kind='gaussian', **kwargs)
  if name == 'deblur_uniform':
    return Deblur(x_shape, kind='uniform', **kwargs)
  if name == 'colorize':
    return Colorization(x_shape)
  raise UserError(f'Unknown operator {name!r}. Valid: denoise, '
                  'inpaint_random, inpaint_box, sr_pool, sr_bicubic, '
                  'deblur_gaussian, deblur_uniform, colorize.')
