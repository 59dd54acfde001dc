// The Hadamard rotation llama.cpp applies to quantized K/V: rotating a head's values spreads
// outliers across the block, so q8_0/q4_0 lose less. Keys and queries are rotated alike (dot
// products are unchanged: H is orthonormal), values are rotated before storing and the attention
// output rotated back (H is its own inverse).

/** Rotation sizes for a head size and K/V types: 0 where llama.cpp does not rotate. */
export function rotationSizes(headDim: number, quantizedK: boolean, quantizedV: boolean): { k: number; v: number } {
  let k = 0;
  if (quantizedK && headDim % 64 === 0) {
    // the largest power of two (at least 64) that divides the head size
    k = 64;
    while (headDim % (k * 2) === 0) k *= 2;
  }
  return { k, v: quantizedV && headDim % 64 === 0 ? 64 : 0 };
}

/** The n×n Hadamard matrix (Sylvester's construction) scaled by 1/√n, row-major. */
export function hadamardMatrix(n: number): Float32Array {
  if (n < 1 || (n & (n - 1)) !== 0) throw new RangeError(`Hadamard size ${n} is not a power of two`);
  const h = new Float32Array(n * n);
  h[0] = 1 / Math.sqrt(n);
  for (let s = 1; s < n; s *= 2) {
    for (let i = 0; i < s; i++) {
      for (let j = 0; j < s; j++) {
        const v = h[i * n + j]!;
        h[(i + s) * n + j] = v;
        h[i * n + j + s] = v;
        h[(i + s) * n + j + s] = -v;
      }
    }
  }
  return h;
}

/** Applies the scaled Hadamard transform in place to every n-wide chunk of `x` (fast, O(n log n)). */
export function hadamardInPlace(x: Float32Array, n: number): void {
  const scale = 1 / Math.sqrt(n);
  for (let base = 0; base + n <= x.length; base += n) {
    for (let h = 1; h < n; h *= 2) {
      for (let i = base; i < base + n; i += h * 2) {
        for (let j = i; j < i + h; j++) {
          const a = x[j]!, b = x[j + h]!;
          x[j] = a + b;
          x[j + h] = a - b;
        }
      }
    }
    for (let i = base; i < base + n; i++) x[i]! *= scale;
  }
}
