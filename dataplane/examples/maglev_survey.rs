//! Measures Maglev's worst extra disruption when one of n backends goes away, relative to
//! the unavoidable M/n slots of the removed backend, over 100 hash salts per (n, M). The
//! numbers back the bound `userspace_lb.rs` asserts. Run: `cargo run --release -p
//! kproxy-dataplane --example maglev_survey`.

use kproxy_dataplane::lb::maglev::{Maglev, MaglevMember, next_prime};
use kproxy_dataplane::lb::stable_hash;

fn main() {
    for (n, f) in [
        (5usize, 100usize),
        (5, 1000),
        (10, 100),
        (10, 1000),
        (20, 100),
        (20, 1000),
        (39, 100),
        (39, 1000),
        (100, 100),
        (100, 655),
    ] {
        let m = next_prime(f * n + 1);
        let mut worst = 0f64;
        for salt in 0..100u64 {
            let ids: Vec<u64> = (0..n as u64).map(|i| stable_hash(&i, salt)).collect();
            let all: Vec<MaglevMember> = ids
                .iter()
                .map(|id| MaglevMember { id: *id, weight: 1 })
                .collect();
            let after: Vec<MaglevMember> = all[1..].to_vec();
            let (b, a) = (
                Maglev::new(&all, m).expect("prime"),
                Maglev::new(&after, m).expect("prime"),
            );
            let extra = b
                .table()
                .iter()
                .zip(a.table())
                .filter(|(b, a)| **b != 0 && after[**a as usize].id != ids[**b as usize])
                .count();
            worst = worst.max(extra as f64 / (m as f64 / n as f64));
        }
        println!(
            "n={n} M={m} worst extra = {worst:.3} · M/n = {:.4} of keys",
            worst / n as f64
        );
    }
}
