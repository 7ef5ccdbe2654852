// Splits one ring sample into the records it holds. A sample is one record
// today; with per-CPU batching in BPF (bench/PROPOSALS.md P1) it is several
// complete records back to back, each sized by its kind. Pure: no syscalls,
// never reads past the sample, never assumes alignment.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>

#include "kleak_abi.h"

namespace kleak::core {

// The longest record: a printk header and KLEAK_PRINTK_MAX bytes of text
// (static_asserted against bpf/kleak_abi.h in record_batch.cpp). A buffer this
// big holds any record that wraps around a ring's end.
inline constexpr std::size_t kMaxRecordBytes = 24 + 1024;

// How many leading bytes of a record tell its size (the printk header,
// which ends with the text length).
inline constexpr std::size_t kRecordSizeProbeBytes = 24;

// The size of the record that starts a part of a sample `rest_size` bytes
// long, of which `start` holds at least the first
// min(rest_size, kRecordSizeProbeBytes) bytes. 0 when it cannot tell: unknown
// kind, or fewer bytes left than the record needs. A printk record inside a
// batch is padded to 8 bytes; a lone one (or the last) may end unpadded.
std::size_t record_size_at(std::span<const std::byte> start, std::size_t rest_size);

// Copies the header at the start of `record`; false if it is shorter than one.
bool read_header(std::span<const std::byte> record, kleak_record_header& out);

// Whether a record is a time mark (a clock reading closing a batch, not an event).
bool is_time_mark(std::span<const std::byte> record);

// The size of the record at the start of `rest`, the unread part of a sample.
inline std::size_t next_record_size(std::span<const std::byte> rest) { return record_size_at(rest, rest.size()); }

// Calls on_record(record) for every record of `sample`, in order; returns how
// many. What cannot be sized (unknown kind, truncated record) is handed on as
// one last record holding the rest of the sample, for the decoder to count as
// undecodable. An empty sample holds no record.
template <class OnRecord>
std::size_t for_each_record(std::span<const std::byte> sample, OnRecord&& on_record) {
    std::size_t count = 0;
    while (!sample.empty()) {
        std::size_t size = next_record_size(sample);
        if (size == 0) size = sample.size();
        on_record(sample.first(size));
        sample = sample.subspan(size);
        ++count;
    }
    return count;
}

// Copies bytes [offset, offset + out.size()) of the sample made of `first`
// then `second` into `out`.
void copy_from_pieces(std::span<const std::byte> first, std::span<const std::byte> second, std::size_t offset,
                      std::span<std::byte> out);

// The same for a sample that wraps around the end of its ring: `first` runs
// to the ring's end, `second` continues from the ring's start. Records wholly
// inside one piece are handed on in place; the one that straddles the end is
// copied into `bounce` (at least kMaxRecordBytes) first. A rest that cannot be
// sized and is longer than `bounce` is handed on cut to bounce's size: its
// header alone already makes it undecodable.
template <class OnRecord>
std::size_t for_each_record(std::span<const std::byte> first, std::span<const std::byte> second,
                            std::span<std::byte> bounce, OnRecord&& on_record) {
    const std::size_t total = first.size() + second.size();
    std::size_t count = 0;
    std::size_t pos = 0;
    while (pos < first.size()) {
        const std::size_t rest = total - pos;
        const std::span<const std::byte> here = first.subspan(pos);
        std::span<const std::byte> probe = here;
        if (here.size() < std::min(rest, kRecordSizeProbeBytes)) {
            const std::span<std::byte> head = bounce.first(std::min(rest, kRecordSizeProbeBytes));
            copy_from_pieces(first, second, pos, head);
            probe = head;
        }
        std::size_t size = record_size_at(probe, rest);
        if (size == 0) size = rest;
        if (size <= here.size()) {
            on_record(here.first(size));
        } else {
            const std::span<std::byte> whole = bounce.first(std::min(size, bounce.size()));
            copy_from_pieces(first, second, pos, whole);
            on_record(std::span<const std::byte>(whole));
        }
        pos += size;
        ++count;
    }
    return count + for_each_record(second.subspan(pos - first.size()), on_record);
}

}  // namespace kleak::core
