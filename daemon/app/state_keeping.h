// What a restarted daemon keeps (README "What survives what"): at start-up
// the state image stored with systemd (service/fd_store.h) goes back into
// the tracker, the printk window and the verdicts' histories when this build
// wrote it in this boot (core/state_image.h says what is refused); on a
// clean stop and every snapshots.checkpoint_interval a fresh image replaces
// it. Without systemd nothing is passed nor stored: `kleakd serve` from a
// shell starts fresh, as before.
//
// The programs' links and maps are stored with systemd too (keep_programs):
// a restarted daemon of the same object and configuration adopts them, the
// programs having run all along, and consumes the rings from where the
// previous one stopped, after the image is loaded: nothing is lost across a
// clean restart (gap 0). After a crash, the records the dead process had
// consumed since its last checkpoint are the gap. When the programs do not
// fit (an upgrade changed them) they are attached anew, and what the kernel
// did between the previous process's exit and the attach is the gap. It is
// reported (stats, snapshots) and its consequences are bounded: an allocation
// restored from the image whose free fell in the gap stays outstanding, but
// the verdicts judge no site on points from before the restart (SiteVerdicts
// restart_ns()), and a restored plateau never rises.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/pipeline.h"
#include "core/printk.h"
#include "core/site_verdicts.h"
#include "core/state_image.h"
#include "kernel/bpf_tracer.h"
#include "kernel/handed_rings.h"
#include "kernel/unique_fd.h"
#include "service/fd_store.h"

namespace kleak {

class StateKeeping {
public:
    // Loads the stored image, if any, into the pipeline's tracker (before
    // its first record), `printk` (may be null) and `verdicts`, and logs one
    // line: what was restored, or why not.
    StateKeeping(std::vector<UniqueFd> stored, core::Pipeline& pipeline, core::PrintkLog* printk,
                 core::SiteVerdicts& verdicts);

    bool active() const { return store_.active(); }
    // Tracing (re)started at now_ns: the end of the gap.
    void tracing_started(std::uint64_t now_ns) { tracing_started_ns_ = now_ns; }

    // Once the tracer is up: hands its links and maps to systemd, unless it
    // adopted them from there, dropping the old ones it replaced. A clean
    // stop's image with adopted programs leaves no gap. `reading`: how the
    // adopted rings were read (kernel/handed_rings.h); `started_ns`: when
    // the session started, the first read when they were not read early.
    void keep_programs(const BpfTracer& tracer, const HandedReading& reading, std::uint64_t started_ns);
    // The tracer's rings changed (a CPU came online): the stored set is replaced.
    void programs_changed(const BpfTracer& tracer);
    // Whether systemd holds the links: a stop then leaves the programs
    // attached for the next process (systemd closes them on `systemctl stop`).
    bool programs_kept() const { return programs_kept_; }

    // A clean stop that hands its programs over: the rings' tail
    // (TracingSession::ring_tail()) goes to systemd after the image. The
    // next start takes it back out (forget_ring_tail()): it fits only the
    // rings as this process left them.
    void store_ring_tail(UniqueFd tail);
    void forget_ring_tail() { store_.remove_ring_tail(); }

    // Writes the image and hands it to systemd. `tracked_until_ns`: the
    // records' time up to which the tracker is complete (a clean stop: the
    // detach; a checkpoint: now). Failures are logged, rate-limited.
    void save(core::StateKind kind, std::uint64_t tracked_until_ns, const core::Pipeline& pipeline,
              const core::PrintkLog* printk, const core::SiteVerdicts& verdicts);
    // A `reset`: the stored state is forgotten too, and so is the restore
    // (its gap is no longer in the baseline).
    void forget();

    // How long nothing was traced across the restart (0: not restored).
    std::uint64_t gap_ns() const;
    // How long no process read the adopted rings across a clean restart:
    // the previous kleakd's last drain to this one's first copy (records
    // are lost only if a ring overflowed meanwhile: losses.dropped).
    // nullopt when the rings were not adopted from a clean stop.
    std::optional<std::uint64_t> unread_ns() const;

    // The "state" object of `stats` and snapshots (docs/PROTOCOL.md). The
    // tracker says how many live allocations were born before the gap:
    // those whose free the gap may have hidden.
    nlohmann::json to_json(const core::Tracker& tracker) const;

private:
    service::StateStore store_;
    core::StateOrigin here_;
    std::string restored_from_;  // state_kind_name(), or "" when nothing was restored
    std::string refused_;        // why a stored image was not used
    std::uint64_t image_tracked_until_ns_ = 0;
    std::uint64_t tracing_started_ns_ = 0;
    // Adopted after a clean stop: the previous process's last read of the
    // rings and this one's first; else 0.
    std::uint64_t rings_unread_from_ns_ = 0;
    std::uint64_t rings_read_since_ns_ = 0;
    std::uint64_t tail_bytes_ = 0;
    std::uint64_t restored_outstanding_ = 0;
    double load_ms_ = 0;
    std::uint64_t saves_ = 0;
    std::uint64_t save_failures_ = 0;
    std::uint64_t last_image_bytes_ = 0;
    double last_save_ms_ = 0;
    // Hands the links, maps and rings to systemd; false (logged) on failure.
    bool store_programs(const BpfTracer& tracer);

    const char* programs_ = "fresh";  // continuity_name()
    bool programs_kept_ = false;
};

}  // namespace kleak
