/**
 * Independent f16/bf16 rounding references for the tests, written from the IEEE 754
 * definitions with f64 arithmetic (not ported from the C++ code they check).
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bitsOf(x: number): number {
  f32[0] = x;
  return u32[0];
}

export function floatOf(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

/** Round half to even of a non-negative real. */
function rne(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** IEEE binary16 bit pattern nearest to the (f32-representable) value x. */
export function f16BitsRef(x: number): number {
  if (Number.isNaN(x)) {
    const b = bitsOf(x);
    return ((b >>> 16) & 0x8000) | 0x7e00 | ((b >>> 13) & 0x3ff);
  }
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  // Quantum of the binade (subnormals share the 2^-24 quantum).
  const e = a >= 2 ** -14 ? Math.floor(Math.log2(a)) : -14;
  let exp = e;
  if (2 ** exp > a) exp--; // guard log2 rounding
  if (2 ** (exp + 1) <= a) exp++;
  const q = exp < -14 ? 2 ** -24 : 2 ** (exp - 10);
  const m = rne(a / q) * q; // nearest representable magnitude (may step into the next binade)
  if (m >= 65520 || m > 65504) return sign | 0x7c00;
  if (m === 0) return sign;
  if (m < 2 ** -14) return sign | (m / 2 ** -24);
  let me = Math.floor(Math.log2(m));
  if (2 ** me > m) me--;
  if (2 ** (me + 1) <= m) me++;
  return sign | ((me + 15) << 10) | (m / 2 ** (me - 10) - 1024);
}

/** The value of a binary16 bit pattern. */
export function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1024 + m) * 2 ** (e - 25);
}

/** bfloat16 bit pattern nearest to x (f32 truncated to 8 mantissa bits, RNE, subnormals kept). */
export function bf16BitsRef(x: number): number {
  const b = bitsOf(x);
  if (Number.isNaN(x)) return ((b >>> 16) | 0x40) & 0xffff;
  const sign = b & 0x80000000 ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7f80;
  const exp = (b >>> 23) & 0xff;
  const q = exp === 0 ? 2 ** -133 : 2 ** (exp - 127 - 7); // bf16 quantum in this binade
  const m = rne(a / q) * q;
  if (m > 3.3895313892515355e38) return sign | 0x7f80; // above bf16 max -> Inf
  return sign | (bitsOf(m) >>> 16);
}
