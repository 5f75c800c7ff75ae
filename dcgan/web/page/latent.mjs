// Latent vectors: seeded normal samples, truncation, interpolation, moves along directions.
// A latent batch is a Float32Array of n * zDim numbers (the generator's N x z x 1 x 1 input, flattened).

// mulberry32: a small, fast, seeded 32-bit generator; the same seed gives the same samples in every browser.
export function rng(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// One standard normal number (Box-Muller; 1 - u keeps log away from 0).
export function normal(uniform) {
  const u = 1 - uniform();
  const v = uniform();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

// n latents of zDim numbers; with `truncation`, values beyond +-truncation are drawn again (as `dcgan generate`).
export function sample(uniform, n, zDim, truncation = null) {
  const z = new Float32Array(n * zDim);
  for (let i = 0; i < z.length; i++) {
    let value = normal(uniform);
    while (truncation && Math.abs(value) > truncation) value = normal(uniform);
    z[i] = value;
  }
  return z;
}

// (1 - t) a + t b: exactly a at t = 0 and exactly b at t = 1.
export function lerp(a, b, t) {
  return a.map((value, i) => (1 - t) * value + t * b[i]);
}

// Along the great circle from a to b (White 2016): normal latents lie near a sphere, not inside it.
export function slerp(a, b, t) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / Math.sqrt(na * nb))));
  if (omega < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * omega) / Math.sin(omega);
  const wb = Math.sin(t * omega) / Math.sin(omega);
  return a.map((value, i) => wa * value + wb * b[i]);
}

// z moved by amounts[k] along directions[k] (each a zDim array: one standard deviation of its component).
export function moved(z, directions, amounts) {
  const out = Float32Array.from(z);
  directions.forEach((direction, k) => {
    if (amounts[k]) for (let i = 0; i < out.length; i++) out[i] += amounts[k] * direction[i];
  });
  return out;
}
