// libFuzzer target: the ring sample decoder. The input is one ring sample
// (one record, or a batch of records back to back) as BPF could leave it,
// followed by records of other CPUs. Checks:
// - for_each_record over a sample that wraps around the ring's end (split
//   anywhere) hands on the same records as over the sample in one piece;
// - decode_record_fast agrees with decode_record on every record;
// - the whole pipeline (stamp windows, merge, tracker) takes the records of
//   several CPUs, released by watermarks, without failing.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "core/event.h"
#include "core/fast_decode.h"
#include "core/pipeline.h"
#include "core/record_batch.h"

namespace {

using namespace kleak::core;

void check(bool ok) {
    if (!ok) std::abort();
}

bool same_event(const Event& a, const Event& b) {
    return a.ts_ns == b.ts_ns && a.ptr == b.ptr && a.call_site == b.call_site && a.bytes_req == b.bytes_req &&
           a.bytes_alloc == b.bytes_alloc && a.gfp_flags == b.gfp_flags && a.tgid == b.tgid && a.tid == b.tid &&
           a.kind == b.kind && a.cpu == b.cpu && a.cache == b.cache;
}

void check_decoders_agree(std::span<const std::byte> record) {
    Event slow;
    Event fast;
    const DecodeStatus slow_status = decode_record(record, 3, slow);
    const DecodeStatus fast_status = decode_record_fast(record, 3, fast);
    check(slow_status == fast_status);
    if (slow_status == DecodeStatus::ok) check(same_event(slow, fast));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    // Byte 0: where the sample wraps; byte 1: how many CPUs the rest spreads over.
    const std::size_t wrap_at = data[0];
    const unsigned cpus = 1 + data[1] % 4;
    const std::span<const std::byte> sample(reinterpret_cast<const std::byte*>(data + 2), size - 2);

    std::vector<std::vector<std::byte>> whole;
    for_each_record(sample, [&](std::span<const std::byte> record) {
        whole.emplace_back(record.begin(), record.end());
        check_decoders_agree(record);
    });

    const std::size_t cut = std::min(wrap_at, sample.size());
    std::array<std::byte, kMaxRecordBytes> bounce{};
    std::size_t index = 0;
    for_each_record(sample.first(cut), sample.subspan(cut), bounce, [&](std::span<const std::byte> record) {
        check(index < whole.size());
        const std::vector<std::byte>& expected = whole[index++];
        // An unsizable rest longer than the bounce buffer is handed on cut
        // to the buffer's size (record_batch.h); anything else is the same.
        const bool cut_short = record.size() == bounce.size() && expected.size() > bounce.size();
        check(record.size() == expected.size() || cut_short);
        check(std::memcmp(record.data(), expected.data(), record.size()) == 0);
    });
    check(index == whole.size());

    // Record i goes to CPU i % cpus; a watermark every 8 records.
    Pipeline pipeline(cpus);
    pipeline.set_printk_sink([](PrintkLine&&) {});
    std::size_t n = 0;
    for (const auto& record : whole) {
        pipeline.on_record(static_cast<unsigned>(n % cpus), record);
        if (++n % 8 == 0) pipeline.release_until(pipeline.newest_ts(0));
    }
    pipeline.finish();
    pipeline.settle();
    check(pipeline.staged() == 0);
    return 0;
}
