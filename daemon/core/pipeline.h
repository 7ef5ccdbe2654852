// Raw records in, tracker state out: decode -> stage in the merge -> release in
// time order up to a watermark -> apply to the tracker. Live tracing and the
// replay of a recording both run through this one path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "merger.h"
#include "stamp_windows.h"
#include "printk.h"
#include "recording_frames.h"
#include "tracker.h"

namespace kleak::core {

// Takes the released records off the pipeline's hands instead of its own
// tracker (replay tracks on a second thread, app/tracking_thread.h): the
// merge writes them straight into room() and reports filled(n), in order.
class ReleaseHandoff {
public:
    virtual ~ReleaseHandoff() = default;
    virtual std::span<Event> room() = 0;  // never empty
    virtual void filled(std::size_t n) = 0;
};

class Pipeline {
public:
    explicit Pipeline(unsigned cpu_count);

    // Where printk lines go, in merged time order. Without a sink printk
    // records are decoded and dropped (report replays, allocation-only runs).
    using PrintkSink = std::function<void(PrintkLine&&)>;
    void set_printk_sink(PrintkSink sink) { printk_sink_ = std::move(sink); }

    // Decodes and stages one record; undecodable ones are counted, not staged.
    // During a sliced release the record waits for the next release, exactly
    // as it would have after a one-shot release (see begin_release).
    void on_record(unsigned cpu, std::span<const std::byte> record);
    // on_record() for every whole frame of one CPU's recording that `frames`
    // holds (replay's loop, inlined); returns why it stopped: need_more at
    // the end of the bytes, or corrupt.
    FrameStatus on_frames(unsigned cpu, FrameReader& frames);
    // Releases and tracks everything staged up to `watermark`, at once.
    void release_until(std::uint64_t watermark);
    void finish();  // end of input: release everything
    // After finish() (and after the tracking thread, if any, is done): the
    // tracker's settle(), no free being still to come.
    void settle() { tracker_.settle(); }

    // The same release, in slices (the daemon answers queries between them).
    // begin_release() finishes a release still in progress, then fixes what
    // the new one covers (what is staged now, up to the watermark) and moves
    // the lateness bar; release_some(n) tracks the next at most n records of
    // it, a prefix of the merged order, and returns true while some are left.
    // Records may be staged between slices: they wait for the next release,
    // so slices add up to exactly what release_until() would have done, in the
    // same order with the same late count. Between slices the tracker holds a
    // prefix of the merged stream.
    void begin_release(std::uint64_t watermark);
    bool release_some(std::size_t max_records);
    bool releasing() const { return merger_.releasing(); }

    // Two halves on two threads: with a handoff set (and no printk sink: printk
    // lines always go out on the merging side), released records go to the
    // handoff, and whoever holds them applies them with track(), in order. The
    // merging half (on_record, release) and track() touch disjoint state;
    // nothing may read tracker() until the handoff is drained and removed.
    void set_release_handoff(ReleaseHandoff* handoff) { handoff_ = handoff; }
    void track(std::span<const Event> released) { tracker_.apply(released); }

    const Tracker& tracker() const { return tracker_; }
    // For loading a saved state into (core/state_image.h): before the first record.
    Tracker& tracker_to_restore() { return tracker_; }
    // Tracker::index_ages(): before the first record.
    void index_ages() { tracker_.index_ages(); }
    std::uint64_t late() const { return merger_.late(); }
    std::uint64_t undecodable() const { return undecodable_; }
    std::uint64_t records() const { return records_; }
    std::size_t staged() const { return merger_.staged(); }
    std::size_t staged_capacity() const { return merger_.staged_capacity(); }
    // Newest timestamp staged from `cpu` so far (0 if none).
    std::uint64_t newest_ts(unsigned cpu) const { return cpu < newest_ts_.size() ? newest_ts_[cpu] : 0; }

    // Forgets everything, a release in progress included.
    void reset();

private:
    // A printk record is kept (its text stored, its Event given the text's
    // handle) only when there is a sink.
    bool keep_printk(Event& event, std::span<const std::byte> record);
    void note_newest(std::uint16_t cpu, std::uint64_t ts_ns);
    // Stages one record in the merge (what StampWindows hands on).
    void stage(const Event& event) {
        note_newest(event.cpu, event.ts_ns);
        merger_.stage(event);
    }
    void apply_released(std::span<const Event> released);
    void release_printk(const Event& event);

    Merger merger_;
    StampWindows stamp_windows_;  // before the merge: frees get their time
    Tracker tracker_;
    // The merge writes released records here a chunk at a time, and the
    // tracker takes the chunk as one span (it prefetches ahead).
    std::vector<Event> released_;
    std::vector<std::uint64_t> newest_ts_;
    PrintkSink printk_sink_;
    ReleaseHandoff* handoff_ = nullptr;
    // Texts of staged printk records, by the handle their Event carries in ptr.
    std::unordered_map<std::uint64_t, std::string> printk_texts_;
    std::uint64_t next_printk_handle_ = 1;
    std::uint64_t undecodable_ = 0;
    std::uint64_t records_ = 0;
};

}  // namespace kleak::core
