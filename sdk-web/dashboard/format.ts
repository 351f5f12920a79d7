// How numbers read: counts with separators, seconds as minutes and seconds,
// percentages and money, changes with their sign. No DOM here.

const integer = new Intl.NumberFormat("en-US");
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

/** A count: "1,234". */
export function count(value: number): string {
  return integer.format(value);
}

/** A ratio such as views per visit: "2.35". */
export function ratio(value: number): string {
  return decimal.format(value);
}

/** A percentage (0-100): "42.5%". */
export function percent(value: number): string {
  return `${new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 }).format(value)}%`;
}

/** A duration in seconds: "45s", "3m 07s", "2h 05m". */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

/** An amount of money: "$1,234.50". */
export function money(value: number, currency: string): string {
  try {
    return new Intl.NumberFormat("en-US", { style: "currency", currency }).format(value);
  } catch {
    return `${decimal.format(value)} ${currency}`;
  }
}

/** A relative change (0.25 = +25%): "+25%", "−8%", "0%". */
export function change(value: number): string {
  const pct = Math.round(value * 100);
  if (pct == 0) return "0%";
  return `${pct > 0 ? "+" : "\u2212"}${integer.format(Math.abs(pct))}%`;
}
