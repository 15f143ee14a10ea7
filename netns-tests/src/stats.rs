//! Judging a load distribution: Pearson's chi-square goodness-of-fit test against equal
//! shares, with its p-value computed here (regularized upper incomplete gamma function).
//!
//! Tests use [`assert_uniform`] with a p-value floor of 0.001, so a fair balancer fails
//! one run in a thousand, and choose the number of connections with
//! [`samples_to_detect_skew`] so that a 2:1 skew between two endpoints would fail.

use std::collections::BTreeMap;

/// The p-value floor tests use: a fair distribution fails once in a thousand runs.
pub const P_FLOOR: f64 = 0.001;

/// Result of a goodness-of-fit test.
#[derive(Debug, Clone, PartialEq)]
pub struct ChiSquare {
    /// The statistic Σ (observed − expected)² / expected.
    pub statistic: f64,
    /// Degrees of freedom (categories − 1).
    pub dof: usize,
    /// Probability of a statistic at least this large if shares were equal.
    pub p_value: f64,
}

/// Tests observed counts against equal shares over `categories` categories (categories
/// missing from `counts` count as zero).
pub fn chi_square_uniform(counts: &[usize], categories: usize) -> ChiSquare {
    let total: usize = counts.iter().sum();
    if categories < 2 || total == 0 {
        return ChiSquare {
            statistic: 0.0,
            dof: categories.saturating_sub(1),
            p_value: 1.0,
        };
    }
    let expected = total as f64 / categories as f64;
    let observed = counts
        .iter()
        .copied()
        .chain(std::iter::repeat(0))
        .take(categories);
    let statistic: f64 = observed
        .map(|o| {
            let d = o as f64 - expected;
            d * d / expected
        })
        .sum();
    let dof = categories - 1;
    ChiSquare {
        statistic,
        dof,
        p_value: chi_square_sf(statistic, dof as f64),
    }
}

/// Asserts that hits are spread evenly over exactly `expected` (p ≥ [`P_FLOOR`]) and that
/// nothing outside `expected` was hit.
pub fn assert_uniform(hits: &BTreeMap<String, usize>, expected: &[&str]) -> ChiSquare {
    for name in hits.keys() {
        assert!(
            expected.contains(&name.as_str()),
            "unexpected backend {name}: {hits:?}"
        );
    }
    let counts: Vec<usize> = expected
        .iter()
        .map(|e| hits.get(*e).copied().unwrap_or(0))
        .collect();
    let result = chi_square_uniform(&counts, expected.len());
    assert!(
        result.p_value >= P_FLOOR,
        "distribution is not uniform (chi² = {:.2}, dof = {}, p = {:.2e}): {hits:?}",
        result.statistic,
        result.dof,
        result.p_value
    );
    result
}

/// The smallest number of samples for which a 2:1 skew (one endpoint getting twice the
/// share of each other one) fails the test with [`P_FLOOR`], for `k` endpoints.
pub fn samples_to_detect_skew(k: usize) -> usize {
    let k = k.max(2);
    (k..100_000)
        .step_by(k + 1)
        .find(|&m| {
            let unit = m as f64 / (k + 1) as f64;
            let mut counts = vec![unit.round() as usize; k];
            counts[0] = (2.0 * unit).round() as usize;
            chi_square_uniform(&counts, k).p_value < P_FLOOR / 10.0
        })
        .unwrap_or(100_000)
}

/// Survival function of the chi-square distribution: P(X ≥ x) with `dof` degrees.
pub fn chi_square_sf(x: f64, dof: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// Regularized upper incomplete gamma Q(a, x) (Numerical Recipes' series and continued
/// fraction, switching at x = a + 1).
fn gamma_q(a: f64, x: f64) -> f64 {
    const EPS: f64 = 1e-14;
    const MAX_ITER: usize = 10_000;
    let ln_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..MAX_ITER {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        (1.0 - sum * ln_prefix.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..MAX_ITER {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < EPS {
                break;
            }
        }
        (ln_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn survival_function_matches_tables() {
        // Critical values at 5% and 0.1% from standard chi-square tables.
        assert!(close(chi_square_sf(3.841, 1.0), 0.05, 1e-3));
        assert!(close(chi_square_sf(5.991, 2.0), 0.05, 1e-3));
        assert!(close(chi_square_sf(9.488, 4.0), 0.05, 1e-3));
        assert!(close(chi_square_sf(13.816, 2.0), 0.001, 1e-4));
        assert!(close(chi_square_sf(29.588, 10.0), 0.001, 1e-4));
        assert_eq!(chi_square_sf(0.0, 3.0), 1.0);
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-10));
    }

    #[test]
    fn equal_counts_pass_and_a_two_to_one_skew_fails() {
        assert_eq!(chi_square_uniform(&[100, 100, 100], 3).p_value, 1.0);
        let m = samples_to_detect_skew(3);
        let unit = m / 4;
        assert!(chi_square_uniform(&[2 * unit, unit, unit], 3).p_value < P_FLOOR);
        assert!(m <= 400, "2:1 over 3 endpoints needs few samples, got {m}");
    }

    #[test]
    fn missing_backends_count_as_zero() {
        let mut hits = BTreeMap::new();
        hits.insert("a".to_owned(), 200);
        let result = chi_square_uniform(&[200], 2);
        assert!(result.p_value < 1e-10);
        let caught = std::panic::catch_unwind(|| assert_uniform(&hits, &["a", "b"]));
        assert!(
            caught.is_err(),
            "a backend that got nothing must fail the assertion"
        );
    }
}
