//! Record encoding + CRC32C, the per-record CPU cost on the journal's hot path.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use twinmq::ids::{Epoch, Offset};
use twinmq::journal::record::{self, HEADER_BYTES, RecordKind};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_encode");
    for size in [100usize, 1024, 16 * 1024] {
        let payload = vec![0x42u8; size];
        let mut dst = vec![0u8; HEADER_BYTES + size];
        group.throughput(Throughput::Bytes((HEADER_BYTES + size) as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                record::encode(
                    black_box(&mut dst),
                    RecordKind::Opaque,
                    0,
                    Offset(4096),
                    Epoch(1),
                    black_box(&payload),
                )
            })
        });
    }
    group.finish();
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_check");
    for size in [100usize, 1024, 16 * 1024] {
        let mut buf = vec![0u8; HEADER_BYTES + size];
        record::encode(
            &mut buf,
            RecordKind::Opaque,
            0,
            Offset(4096),
            Epoch(1),
            &vec![7; size],
        );
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| record::check(black_box(&buf), Offset(4096), u32::MAX).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, encode, check);
criterion_main!(benches);
