// Medians of per-round figures and of per-round ratios to a baseline: the
// machine drifts over minutes, so each variant is compared with the baseline
// measured in the same round, and the spread of those ratios is reported.

export function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/**
 * |rounds| and |base|: arrays indexed by round of a variant's figure and the
 * baseline's (null where a round has none). Returns { median, ratio: { median,
 * min, max, n } } of the figure and of figure/baseline per round.
 */
export function summarize(rounds, base) {
  const ratios = [];
  if (base) {
    for (let i = 0; i < rounds.length; i++) {
      if (Number.isFinite(rounds[i]) && Number.isFinite(base[i]) && base[i] > 0) ratios.push(rounds[i] / base[i]);
    }
  }
  return {
    median: median(rounds),
    n: rounds.filter((x) => Number.isFinite(x)).length,
    ratio: ratios.length ? { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios), n: ratios.length } : null,
  };
}

/** 12345.6 -> "12 346"; 12.345 -> "12.3"; 0.01234 -> "0.0123". */
export function fmt(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US').replace(/,/g, ' ');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(2);
}

export function fmtRatio(r) {
  if (!r) return '';
  const d = (x) => (x >= 10 ? x.toFixed(1) : x.toFixed(2));
  return r.n > 1 ? `${d(r.median)}× [${d(r.min)}–${d(r.max)}]` : `${d(r.median)}×`;
}
