// The daemon: tracing, the query socket, snapshots, and systemd's protocol,
// all on one epoll loop. Queries read the tracker between drains, so a query
// never races ingest and ingest never waits on a client (the server only
// ever does non-blocking I/O).
//
// A drain consumes every ring at once, but merges and tracks what it staged
// in slices of at most kReleaseSliceRecords, going back to the loop between
// slices: a query waits for one slice (a few ms), not for a whole drain. A
// query answered between slices sees the tracker after a prefix of the merged
// stream (every record up to some point in time order, none after). A drain
// that comes while slices are left still consumes every ring at once (its
// records wait for the next release), then finishes the old release before
// starting its own: the result is the same as releasing each drain at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "core/family_coverage.h"
#include "core/site_verdicts.h"
#include "kernel/event_loop.h"
#include "app/pipeline_sink.h"
#include "app/serve_command.h"
#include "app/slab_reconciler.h"
#include "app/stack_control.h"
#include "app/cgroup_namer.h"
#include "app/process_namer.h"
#include "app/tracing_session.h"
#include "config/config.h"
#include "core/pipeline.h"
#include "core/printk.h"
#include "core/report.h"
#include "core/stacks_query.h"
#include "core/symbolizer.h"
#include "service/printk_file.h"
#include "service/query_server.h"
#include "service/snapshot_writer.h"
#include "service/systemd_notify.h"
#include "service/fd_store.h"
#include "app/state_keeping.h"

namespace kleak {

class Daemon final : public service::QueryHandler {
public:
    // Attaches, opens the socket (or takes systemd's), and tells systemd it
    // is ready. Throws StartupError.
    Daemon(const ServeCommand& command, config::Settings settings, SignalFd& signals);
    ~Daemon() override;

    // Until SIGTERM/SIGINT; then detaches, drains, writes a final snapshot.
    void run();

    std::variant<nlohmann::json, proto::Error, service::Subscribe> handle(const proto::Request& request) override;

private:
    core::Losses losses();
    core::Report build_report();
    // For the symbolizer: the call sites the tracker has seen.
    core::CachingSymbolizer::KnownAddresses tracked_call_sites();
    // For the symbolizer, while it reads kallsyms: drains, releasing only
    // when nothing holds the tracker (see name_new_call_sites).
    std::function<void()> drain_while_symbolizing();
    // Names the call sites new since the last kallsyms read, if any. Called
    // before a report or query takes hold of the tracker.
    enum class Naming { whenever_new, at_most_every_10s };
    void name_new_call_sites(Naming naming);
    nlohmann::json snapshot();
    nlohmann::json caches_stats() const;
    nlohmann::json stats();
    // Each non-slab family's live total against the kernel's (core/family_coverage.h).
    nlohmann::json coverage();
    void write_snapshot();
    void checkpoint();
    void sample_verdicts();
    void update_status();
    void store_replaced_rings();
    void reload();
    void reset();
    void on_signal();
    void on_drained(std::uint64_t watermark);
    void continue_release();
    void keep_up_with_rings();
    void publish_printk();
    nlohmann::json printk_query(const proto::PrintkArgs& args) const;
    std::variant<nlohmann::json, proto::Error, service::Subscribe> capture(const proto::CaptureArgs& args);
    nlohmann::json stacks_query(const proto::StacksArgs& args);
    void name_site_processes(nlohmann::json& rows);
    // Names processes as recorded, cgroups recorded since the last slice looked up first.
    ProcessNamer process_namer();
    nlohmann::json processes_stats();
    // The `stacks` result of `query`, its frames named, with the capture in force.
    nlohmann::json live_stacks(const core::StacksQuery& query);
    // Stack frames to name with the call sites at the next kallsyms read
    // (tracked_call_sites), set by stacks_query.
    std::vector<std::uint64_t> frames_to_name_;
    void configure_printk_file();

    ServeCommand command_;
    config::Settings settings_;
    SignalFd& signals_;
    service::SystemdNotifier notifier_;
    // What systemd passed: the activated socket, the stored state.
    service::PassedFds passed_fds_;
    EventLoop loop_;
    core::Pipeline pipeline_;
    core::PrintkLog printk_log_;
    std::vector<core::PrintkLine> fresh_printk_;  // merged since the last drain, for followers and the file
    std::optional<service::PrintkFile> printk_file_;
    std::uint64_t printk_file_failures_ = 0;
    PipelineSink sink_;
    // First of all the slow start-up (kallsyms, the image, the BPF object):
    // the previous kleakd's rings are copied out from here on, and drained
    // into sink_ once the state is loaded (kernel/handed_rings.h).
    HandedRings handed_rings_;
    std::unique_ptr<core::CachingSymbolizer> symbolizer_;
    // Before session_: its histories are read back from the last snapshot
    // before tracing starts, so the rings do not fill while a large file is
    // parsed.
    core::SiteVerdicts verdicts_;
    // Before session_ too: the stored state is loaded into the tracker
    // before anything is attached (app/state_keeping.h).
    StateKeeping state_;
    TracingSession session_;
    service::SnapshotWriter snapshots_;
    SlabReconciler slabs_;
    StackControl stacks_;
    CgroupNamer cgroups_;
    std::optional<service::QueryServer> server_;
    std::filesystem::path owned_socket_;  // unlinked at exit; empty if systemd owns it
    TimerFd snapshot_timer_;
    TimerFd status_timer_;
    TimerFd verdict_timer_;
    TimerFd checkpoint_timer_;
    std::optional<TimerFd> watchdog_timer_;
    WakeFd release_wake_;  // raised while a drain's release has slices left

    std::uint64_t started_ns_ = 0;  // attach time, or the last reset
    // The baselines of the family coverage (core/family_coverage.h): the
    // kernel's page event counters and the BPF page counts at started_ns_.
    core::KernelMemoryCounters kernel_at_start_;
    std::vector<std::uint64_t> page_counts_at_start_;
    void mark_coverage_start();
    std::uint64_t last_drain_ns_ = 0;
    unsigned rings_replaced_stored_ = 0;  // session_.rings_replaced() when the BPF set was last stored
    // Records' time up to which the tracker is complete: the watermark of the
    // last release done (a checkpoint's), and of the one in progress.
    std::uint64_t released_until_ns_ = 0;
    std::uint64_t releasing_until_ns_ = 0;
    bool naming_before_reading_ = false;  // inside name_new_call_sites()
    bool tracing_stopped_ = false;        // detached and drained: the final snapshot
    std::uint64_t last_naming_ns_ = 0;    // when name_new_call_sites() last read kallsyms
    std::uint64_t last_rings_only_drain_ns_ = 0;  // the last drain inside a query's kallsyms read
    bool answering_ = false;  // inside QueryHandler::handle
    std::uint64_t rate_window_ns_ = 0;
    std::uint64_t rate_window_records_ = 0;
    double records_per_second_ = 0;
    std::uint64_t snapshot_failures_ = 0;
};

}  // namespace kleak
