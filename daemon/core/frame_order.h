// Puts a buffer of recording frames (recording_frames.h) in time order.
//
// A CPU's ring is not quite in time order: a record made while another kleak
// program held the CPU's batch (an interrupt that allocates or frees) goes to
// the ring directly, ahead of the batch, whose oldest record can be up to a
// drain period older. `kleakd record` writes each drain's frames of a CPU
// sorted, so a recorded file steps back in time by no more than records in
// flight at a drain (the live holdback), and replay can use the same holdback.
#pragma once

#include <cstddef>
#include <vector>

namespace kleak::core {

// Stable sort of the frames by the record timestamp (the header's first 8
// bytes; a frame too short to hold one sorts as 0). A free that carries a
// lower bound (KLEAK_TS_LOWER_BOUND) sorts with the next record after it that
// has a reading of its own, just before it: that record closes the free's
// window on replay, as it did live, and nothing may come between them. (The
// whole batch is in the buffer: a drain hands on whole samples.) Leaves a
// buffer that is already in order, or ends mid-frame, untouched.
void sort_frames_by_time(std::vector<std::byte>& frames);

}  // namespace kleak::core
