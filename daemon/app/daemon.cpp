#include "app/daemon.h"
#include "app/process_namer.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>
#include <numeric>

#include "app/history_restore.h"
#include "app/priority.h"
#include "core/history_section.h"
#include "core/leaks_query.h"
#include "core/printk_json.h"
#include "core/sizes.h"
#include "core/snapshot.h"
#include "core/suspects_query.h"
#include "kernel/host_info.h"
#include "kernel/kallsyms_file.h"
#include "kernel/startup_error.h"
#include "kleak_abi.h"
#include "version.h"

namespace kleak {

namespace {

// One log line per error, each naming the file and the key.
void log_config_errors(const std::filesystem::path& path, const std::vector<config::ConfigError>& errors,
                       const char* prefix) {
    for (const auto& error : errors) spdlog::error("{}{}", prefix, config::format_error(path, error));
}

constexpr auto kStatusPeriod = std::chrono::seconds(5);
constexpr std::uint64_t kMaxQueryDrainGapNs = 20'000'000;
constexpr std::uint64_t kMinNamingGapNs = 10'000'000'000;
// Records merged and tracked per turn of the loop: ~1-3 ms at 1M outstanding,
// so a query waits for at most that, not for a whole drain (~280K records,
// ~15 ms at full rate).
constexpr std::size_t kReleaseSliceRecords = 32 * 1024;
// Stacks a snapshot carries, most live bytes first.
constexpr std::size_t kSnapshotStacks = 20;

TracerOptions tracer_options(const config::Settings& settings) {
    TracerOptions options;
    options.buffer_size = settings.tracing.buffer_size;
    options.trace_kmalloc = settings.tracing.kmalloc;
    options.trace_kmem_cache = settings.tracing.kmem_cache;
    options.trace_page = settings.tracing.page;
    options.trace_percpu = settings.tracing.percpu;
    options.trace_vmalloc = settings.tracing.vmalloc;
    options.trace_printk = settings.printk.enabled;
    options.attach = parse_attach_mode(settings.tracing.attach).value_or(AttachMode::automatic);  // validated
    options.stacks = core::parse_stack_mode(settings.tracing.stacks).value_or(core::StackMode::suspects);  // validated
    options.stack_sample_shift = settings.tracing.stack_sample_shift;
    return options;
}

core::VerdictRules verdict_rules(const config::VerdictSettings& v) {
    core::VerdictRules rules;
    rules.window_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(v.window).count());
    rules.recent_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(v.recent).count());
    rules.min_history_ns = rules.recent_ns;
    rules.min_rise = v.min_rise;
    return rules;
}

// With the histories the last snapshot carried, when they are this boot's.
core::SiteVerdicts restored_verdicts(const config::Settings& settings) {
    core::SiteVerdicts verdicts(
        static_cast<std::uint64_t>(std::chrono::nanoseconds(settings.verdicts.interval).count()),
        verdict_rules(settings.verdicts));
    restore_site_histories(verdicts, settings.snapshots.directory);
    return verdicts;
}

// `leaks --min-age` adds up birth epochs rather than scanning every live
// allocation (a 1M-entry table is 6-8 ms of a CPU per query). Asked for
// before the stored state is loaded, which then builds the index.
core::Pipeline& with_ages_indexed(core::Pipeline& pipeline) {
    pipeline.index_ages();
    return pipeline;
}

// systemd's socket (kleakd.socket), or nullopt when not socket-activated.
// The stored state, passed with it, is not a socket (service/fd_store.h).
std::optional<UniqueFd> activated_socket(std::vector<UniqueFd>& sockets) {
    if (sockets.empty()) return std::nullopt;
    if (sockets.size() > 1)
        throw StartupError("systemd passed " + std::to_string(sockets.size()) +
                           " sockets; kleakd.socket should define one");
    UniqueFd fd = std::move(sockets.front());
    sockets.clear();
    if (sd_is_socket_unix(fd.get(), SOCK_STREAM, 1, nullptr, 0) <= 0)
        throw StartupError("the socket systemd passed is not a listening Unix stream socket");
    return fd;
}

// Who may query and who may reset, from the config; a group that does not
// exist on this host is logged and left out (root still may).
service::AccessPolicy access_policy(const config::SocketSettings& socket) {
    service::AccessPolicy policy;
    policy.group_name = socket.group;
    policy.group = service::lookup_group(socket.group);
    if (!policy.group) spdlog::info("group '{}' does not exist: only root may query the socket", socket.group);
    policy.admin_group_name = socket.admin_group;
    if (!socket.admin_group.empty()) {
        policy.admin_group = service::lookup_group(socket.admin_group);
        if (!policy.admin_group)
            spdlog::warn("socket.admin_group '{}' does not exist: only root may reset", socket.admin_group);
    }
    return policy;
}

service::ServerLimits server_limits(const config::SocketSettings& socket) {
    service::ServerLimits limits;
    limits.max_clients = socket.max_clients;
    limits.max_unsent_bytes = socket.max_unread;
    limits.idle_timeout = socket.idle_timeout;
    return limits;
}

std::int64_t unix_time_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

Daemon::Daemon(const ServeCommand& command, config::Settings settings, SignalFd& signals)
    : command_(command),
      settings_(std::move(settings)),
      signals_(signals),
      passed_fds_(service::take_passed_fds()),
      pipeline_(possible_cpus()),
      printk_log_(settings_.printk.lines),
      sink_(pipeline_),
      handed_rings_(passed_fds_.bpf, passed_fds_.ring_tail.get(), sink_, monotonic_now_ns()),
      symbolizer_(make_kallsyms_symbolizer(command.kallsyms, tracked_call_sites(), drain_while_symbolizing())),
      verdicts_(restored_verdicts(settings_)),
      state_(std::move(passed_fds_.states), with_ages_indexed(pipeline_),
             settings_.printk.enabled ? &printk_log_ : nullptr, verdicts_),
      session_(tracer_options(settings_), sink_, std::move(passed_fds_.bpf), std::move(handed_rings_)),
      snapshots_(settings_.snapshots.directory, settings_.snapshots.retention),
      slabs_(session_.tracer()),
      stacks_(session_.tracer(), core::parse_stack_mode(settings_.tracing.stacks).value_or(core::StackMode::suspects),
              settings_.tracing.stack_sample_shift),
      snapshot_timer_(settings_.snapshots.interval),
      status_timer_(kStatusPeriod),
      verdict_timer_(settings_.verdicts.interval),
      checkpoint_timer_(settings_.snapshots.checkpoint_interval) {
    service::AccessPolicy policy = access_policy(settings_.socket);
    UniqueFd listener;
    if (auto activated = activated_socket(passed_fds_.sockets)) {
        listener = std::move(*activated);
        spdlog::info("using the query socket passed by systemd");
    } else {
        listener = service::listen_unix(settings_.socket.path, settings_.socket.mode, policy.group);
        owned_socket_ = settings_.socket.path;
    }
    server_.emplace(loop_, std::move(listener), std::move(policy), *this, server_limits(settings_.socket));

    if (settings_.printk.enabled) {
        pipeline_.set_printk_sink(
            [this](core::PrintkLine&& line) { fresh_printk_.push_back(printk_log_.append(std::move(line))); });
        configure_printk_file();
    }
    if (!passed_fds_.bpf_refused.empty())
        spdlog::warn("the programs the previous kleakd left in systemd's fd store were not adopted: {}; attached anew",
                     passed_fds_.bpf_refused);
    started_ns_ = rate_window_ns_ = monotonic_now_ns();
    state_.tracing_started(started_ns_);
    if (passed_fds_.ring_tail) state_.forget_ring_tail();  // in the consumer now, or refused
    passed_fds_.ring_tail.reset();
    state_.keep_programs(session_.tracer(), session_.handed_reading(), started_ns_);
    mark_coverage_start();
    session_.start(loop_, command_.timing, [this](std::uint64_t watermark) { on_drained(watermark); });
    loop_.watch(signals_.fd(), [this]() { on_signal(); });
    loop_.watch(release_wake_.fd(), [this]() { continue_release(); });
    loop_.watch(snapshot_timer_.fd(), [this]() {
        snapshot_timer_.take();
        write_snapshot();
    });
    loop_.watch(status_timer_.fd(), [this]() {
        status_timer_.take();
        update_status();
    });
    loop_.watch(verdict_timer_.fd(), [this]() {
        verdict_timer_.take();
        sample_verdicts();
    });
    loop_.watch(checkpoint_timer_.fd(), [this]() {
        checkpoint_timer_.take();
        checkpoint();
    });
    if (auto interval = notifier_.watchdog_interval()) {
        watchdog_timer_.emplace(*interval);
        loop_.watch(watchdog_timer_->fd(), [this]() {
            watchdog_timer_->take();
            notifier_.watchdog();  // from the main loop: a stuck loop stops petting
        });
    }

    std::string attached;
    for (const auto& a : session_.tracer().attached()) attached += (attached.empty() ? "" : ", ") + a;
    const std::size_t small_rings = session_.tracer().small_ring_cpus().size();
    spdlog::info("kleakd {} tracing {} ({} ring per CPU, {} CPUs{}); queries on {}", kKleakdVersion, attached,
                 core::format_size(settings_.tracing.buffer_size), session_.cpu_count(),
                 small_rings == 0 ? std::string()
                                  : fmt::format(", {} of them offline with a {} ring until they come online",
                                                small_rings, core::format_size(kOfflineRingBytes)),
                 owned_socket_.empty() ? "the activated socket" : owned_socket_.string());
    notifier_.ready("tracing " + attached);
}

Daemon::~Daemon() {
    server_.reset();
    if (!owned_socket_.empty()) ::unlink(owned_socket_.c_str());
}

void Daemon::run() {
    loop_.run();
    notifier_.stopping();
    store_replaced_rings();  // a ring replaced since the last status update (every 5 s)
    // With systemd holding the links, the programs stay attached: what they
    // write from the last drain on is the next process's, in the rings.
    const bool handing_over = state_.programs_kept();
    std::uint64_t detached_ns = monotonic_now_ns();
    if (handing_over) {
        session_.drain_for_handover();
        detached_ns = monotonic_now_ns();
        // From here on the rings' records are the next process's: read into
        // the tail while the image and snapshot are written (kernel/ring_tail.h),
        // then held by rings big enough for the time no kleakd runs.
        session_.keep_reading_for_handover();
        if (session_.make_room_for_restart() > 0) store_replaced_rings();
    } else {
        session_.stop_and_drain();
    }
    tracing_stopped_ = true;
    pipeline_.finish();  // the slices still pending, then everything staged
    // For the next start, before settle(): a displaced entry's free may
    // still come to it (app/state_keeping.h).
    state_.save(core::StateKind::clean_stop, detached_ns, pipeline_, &printk_log_, verdicts_);
    pipeline_.settle();  // no free is still to come: displaced entries were missed frees
    publish_printk();
    if (printk_file_) {
        if (auto error = printk_file_->flush()) spdlog::warn("flushing the printk log failed: {}", *error);
    }
    write_snapshot();
    if (handing_over) state_.store_ring_tail(session_.ring_tail());
    spdlog::info("{}; final snapshot in {}",
                 handing_over ? "programs left attached in systemd's fd store (a restart adopts them, a stop detaches them)"
                              : "detached",
                 snapshots_.directory().string());
}

void Daemon::on_drained(std::uint64_t watermark) {
    last_drain_ns_ = monotonic_now_ns();
    if (!pipeline_.releasing()) released_until_ns_ = releasing_until_ns_;  // the one before: done
    releasing_until_ns_ = watermark;
    pipeline_.begin_release(watermark);
    continue_release();
}

// One slice, then back to the loop: the raised flag brings us back on its
// next turn, after the queries that are waiting.
void Daemon::continue_release() {
    const bool more = pipeline_.release_some(kReleaseSliceRecords);
    // Cgroups first recorded in this slice get their paths now, before they
    // can be removed (one open_by_handle_at each, once).
    cgroups_.name_new(pipeline_.tracker().processes());
    if (more) {
        release_wake_.raise();
    } else {
        release_wake_.lower();
        released_until_ns_ = releasing_until_ns_;
    }
    // Inside a query the server is mid-way through a client: streams are fed
    // at the next slice or drain instead.
    if (!fresh_printk_.empty() && !answering_) publish_printk();
}

// Many queries in one wake-up (50 clients asking for reports) can take longer
// than a ring takes to fill at full allocation rate: drain between them.
void Daemon::keep_up_with_rings() {
    if (monotonic_now_ns() - last_drain_ns_ < kMaxQueryDrainGapNs) return;
    answering_ = true;
    session_.drain();
    answering_ = false;
}

void Daemon::configure_printk_file() {
    const auto& p = settings_.printk;
    if (!p.enabled || !p.file_enabled) {
        printk_file_.reset();
    } else if (printk_file_) {
        printk_file_->reconfigure(p.file_directory, p.file_max_size, p.file_retention);
    } else {
        printk_file_.emplace(p.file_directory, p.file_max_size, p.file_retention);
    }
}

// New kernel-log lines go to the log file and to every follower, then are
// forgotten here (the PrintkLog keeps the window for queries).
void Daemon::publish_printk() {
    if (printk_file_) {
        for (const core::PrintkLine& line : fresh_printk_) {
            auto error = printk_file_->append(core::format_printk_line(line));
            if (!error) continue;
            if (printk_file_failures_++ % 1000 == 0)  // rate-limited
                spdlog::warn("writing the printk log failed: {} ({} lines lost so far)", *error, printk_file_failures_);
        }
    }
    server_->publish([this](const proto::Request& subscription) -> std::optional<nlohmann::json> {
        nlohmann::json lines = nlohmann::json::array();
        for (const core::PrintkLine& line : fresh_printk_) {
            if (core::PrintkLog::matches(
                    line, {subscription.printk.after_seq, subscription.printk.since_ns, subscription.printk.level, 0}))
                lines.push_back(core::printk_line_to_json(line));
        }
        if (lines.empty()) return std::nullopt;
        return nlohmann::json{{"lines", std::move(lines)}};
    });
    fresh_printk_.clear();
}

nlohmann::json Daemon::printk_query(const proto::PrintkArgs& args) const {
    nlohmann::json lines = nlohmann::json::array();
    for (const core::PrintkLine& line : printk_log_.query({args.after_seq, args.since_ns, args.level, args.limit}))
        lines.push_back(core::printk_line_to_json(line));
    return {{"lines", std::move(lines)}, {"last_seq", printk_log_.last_seq()}, {"evicted", printk_log_.evicted()}};
}

void Daemon::on_signal() {
    const int sig = signals_.take();
    if (sig == SIGHUP) {
        reload();
    } else if (sig != 0) {
        spdlog::info("{} received, stopping", strsignal(sig));
        loop_.stop();
    }
}

core::Losses Daemon::losses() {
    core::Losses losses =
        core::make_losses(session_.drops(), pipeline_.late(), pipeline_.undecodable(), settings_.tracing.buffer_size,
                          session_.consumer().peak_backlog_bytes(), session_.program_costs());
    losses.dropped_per_family = session_.tracer().read_drops_by_family();
    losses.untraced_gap_ns = state_.gap_ns();
    return losses;
}

void Daemon::mark_coverage_start() {
    kernel_at_start_ = read_kernel_memory_counters();
    page_counts_at_start_ = session_.tracer().read_page_counts();
}

nlohmann::json Daemon::coverage() {
    core::CoverageInput input;
    for (const core::Family f : core::kFamilies)
        input.traced[static_cast<int>(f)] = session_.tracer().family_attached(static_cast<unsigned>(f));
    input.page_counts = session_.tracer().read_page_counts();
    if (input.page_counts.size() == page_counts_at_start_.size())
        for (std::size_t i = 0; i < input.page_counts.size(); ++i)
            input.page_counts[i] -= std::min(input.page_counts[i], page_counts_at_start_[i]);
    input.kernel_now = read_kernel_memory_counters();
    input.kernel_at_start = kernel_at_start_;
    input.page_size = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
    return core::coverage_to_json(pipeline_.tracker(), input);
}

core::CachingSymbolizer::KnownAddresses Daemon::tracked_call_sites() {
    // Every site a report or query can show is one of the tracker's.
    return [this] {
        std::vector<std::uint64_t> sites;
        sites.reserve(pipeline_.tracker().sites().size());
        for (const core::SiteStats& site : pipeline_.tracker().sites()) sites.push_back(site.call_site);
        sites.insert(sites.end(), frames_to_name_.begin(), frames_to_name_.end());
        return sites;
    };
}

std::function<void()> Daemon::drain_while_symbolizing() {
    // The ~60 ms kallsyms read would otherwise let 8M rings overflow at 6M
    // records/s (140K records were lost at the first query). Before a report
    // or query holds the tracker (name_new_call_sites), the loop's usual
    // drain runs, releases included. Inside one (a site the tracker did not
    // list a moment ago), records only go into the merge's staging, nothing
    // is released into the tracker being read, until the loop's next drain.
    return [this] {
        if (tracing_stopped_) return;  // the final snapshot: the rings are drained for good
        if (!naming_before_reading_) {
            // As often as keep_up_with_rings(), not every chunk: each drain
            // sends a flush IPI to every CPU that holds records.
            const std::uint64_t now = monotonic_now_ns();
            if (now - last_rings_only_drain_ns_ < kMaxQueryDrainGapNs) return;
            last_rings_only_drain_ns_ = now;
            session_.drain_rings_only();
            return;
        }
        keep_up_with_rings();
        // All of it: the loop, which would run the next slices, waits for us.
        while (pipeline_.release_some(kReleaseSliceRecords)) {
        }
        release_wake_.lower();
    };
}

void Daemon::name_new_call_sites(Naming naming) {
    // A read names every site known so far, and new sites keep appearing
    // (slowly, once a host has run a while). A report or snapshot names every
    // site, so it reads whenever one is new: better here than inside. A
    // `leaks` query shows only its top rows, which new sites rarely reach:
    // at most one read every 10 s for it; a shown site still unnamed is read
    // for inside the query, draining without releasing.
    const std::uint64_t now = monotonic_now_ns();
    if (naming == Naming::at_most_every_10s && last_naming_ns_ != 0 && now - last_naming_ns_ < kMinNamingGapNs)
        return;
    naming_before_reading_ = true;
    struct Reset {
        bool& flag;
        ~Reset() { flag = false; }
    } reset{naming_before_reading_};
    if (symbolizer_->name_known()) last_naming_ns_ = now;
}

core::Report Daemon::build_report() {
    name_new_call_sites(Naming::whenever_new);
    return core::build_report(pipeline_.tracker(), losses(), *symbolizer_);
}

nlohmann::json Daemon::snapshot() {
    name_new_call_sites(Naming::whenever_new);  // first: the read may release records, the times come after
    const std::uint64_t now = monotonic_now_ns();
    core::SnapshotContext context{host_name(), kernel_release(), boot_id(), kKleakdVersion, unix_time_ms(),
                                  now,         now - started_ns_};
    nlohmann::json doc = core::snapshot_document(context, build_report());
    doc["verdicts"] =
        core::annotate_verdicts(doc["sites"], pipeline_.tracker(), verdicts_, slabs_.site_caches(pipeline_.tracker()));
    name_site_processes(doc["sites"]);
    doc["caches"] = core::caches_to_json(slabs_.reconcile(pipeline_.tracker()), 0);
    doc["state"] = state_.to_json(pipeline_.tracker());
    // The stacks of the suspect sites (README, "Stacks"), as `stacks` gives them.
    doc["stacks"] = live_stacks({"", kSnapshotStacks});
    return doc;
}

// Slab caches named, /proc/slabinfo reads, and frees of objects allocated
// before tracing (those with a cache: 6.1+), which mark caches still filling up.
nlohmann::json Daemon::caches_stats() const {
    nlohmann::json out = slabs_.stats();
    std::uint64_t unseen = 0, caches = 0;
    nlohmann::json families = nlohmann::json::object();
    for (const auto& [key, count] : pipeline_.tracker().unseen_frees_by_cache()) {
        if (core::is_family_turnover_key(key)) {
            families[std::string(core::family_name(static_cast<core::Family>(key & 0xff)))] = count;
            continue;
        }
        unseen += count;
        ++caches;
    }
    out["unseen_frees"] = unseen;
    out["caches_with_unseen_frees"] = caches;
    out["unseen_frees_by_family"] = families;
    out["unseen_kfrees_unnamed"] = pipeline_.tracker().unseen_kfree_slots_dropped();
    return out;
}

nlohmann::json Daemon::processes_stats() {
    const core::ProcessTable& processes = pipeline_.tracker().processes();
    cgroups_.name_new(processes);
    const core::CgroupNames& cgroups = cgroups_.names();
    return {{"recorded", processes.size()},
            {"limit", core::ProcessTable::kMaxProcesses},
            {"folded", processes.folded()},
            {"processless_allocations", pipeline_.tracker().processless_allocations()},
            {"cgroups_named", cgroups.size()},
            {"cgroups_removed_before_named", cgroups.removed()},
            {"cgroups_unnamed", cgroups.unnamed()},
            {"memory_bytes", processes.memory_bytes() + cgroups.memory_bytes()}};
}

nlohmann::json Daemon::stats() {
    const auto& totals = pipeline_.tracker().totals();
    const core::Losses loss = losses();
    const auto& server = server_->counters();
    return {
        {"uptime_ns", monotonic_now_ns() - started_ns_},
        {"records", pipeline_.records()},
        // Until the first status period has passed, the average since start.
        {"records_per_second", records_per_second_ > 0 ? records_per_second_
                                                       : static_cast<double>(pipeline_.records()) * 1e9 /
                                                             static_cast<double>(std::max<std::uint64_t>(
                                                                 monotonic_now_ns() - started_ns_, 1))},
        {"outstanding", totals.outstanding},
        {"outstanding_bytes", totals.outstanding_bytes},
        {"tracker_bytes", pipeline_.tracker().memory_bytes()},
        {"tracker_class_overflows", pipeline_.tracker().class_overflows()},
        // Who allocated, recorded at the allocation (README "Processes and cgroups").
        {"processes", processes_stats()},
        {"reordered_frees", totals.reordered_frees},
        {"displaced_allocations", pipeline_.tracker().displaced_count()},
        // Each read names every call site seen so far; another follows when
        // a report, snapshot or query (leaks: at most every 10 s) finds a
        // site new since the last.
        {"kallsyms_reads", symbolizer_->loads()},
        // Site histories and verdicts (README "Verdicts").
        {"verdicts",
         {{"samples", verdicts_.histories().samples()},
          {"growing", verdicts_.growing()},
          {"interval_ns", verdicts_.period_ns()},
          {"memory_bytes", verdicts_.memory_bytes()}}},
        // Slab caches named and /proc/slabinfo reads (README "Slab caches").
        {"caches", caches_stats()},
        // The other families against the kernel's counters (README "Allocator families").
        {"coverage", coverage()},
        {"dropped", loss.dropped()},
        {"dropped_per_cpu", loss.dropped_per_cpu},
        {"suggested_buffer_size", loss.suggested_buffer_size},
        {"recursion_misses", loss.recursion_misses()},
        {"programs",
         core::report_to_json(core::Report{{}, {}, loss}).at("losses").value("programs", nlohmann::json::array())},
        {"late", pipeline_.late()},
        {"undecodable", pipeline_.undecodable()},
        {"totals", core::report_to_json(core::Report{totals, {}, loss}).at("totals")},
        {"attached", session_.tracer().attached()},
        {"kernel",
         {{"release", kernel_release()},
          {"attach", attach_mode_name(session_.tracer().attach_choice().mode)},
          {"attach_reason", session_.tracer().attach_choice().reason},
          {"flushes_offline_cpus", session_.tracer().flushes_offline_cpus()}}},
        // Flushes of the BPF record batches since start-up: an IPI for each
        // CPU flushed; drains skip CPUs whose batch is empty, unless the
        // flags could not be mapped.
        {"batch_flushes",
         {{"cpus_flushed", session_.tracer().flushed_cpus()},
          {"cpus_skipped", session_.tracer().skipped_cpus()},
          {"pending_flags_mapped", session_.tracer().pending_flags_mapped()}}},
        // What the per-CPU ring readers copied out because the loop was late
        // to drain (0 while it keeps up).
        {"ring_readers",
         {{"copied_bytes", session_.consumer().spilled_bytes()}, {"unpinned", session_.readers_unpinned()}}},
        // Each CPU's ring: the configured size, or the small one of a CPU
        // offline since start; `grown` counts CPUs that came online since.
        {"rings",
         {{"bytes_per_cpu", session_.tracer().ring_bytes()},
          {"locked_bytes", std::accumulate(session_.tracer().ring_bytes().begin(),
                                           session_.tracer().ring_bytes().end(), std::uint64_t{0})},
          {"grown", session_.rings_grown()}}},
        // What the last daemon left (app/state_keeping.h; README "What survives what").
        {"state", state_.to_json(pipeline_.tracker())},
        {"config", config::settings_to_json(settings_)},
        {"stacks", stacks_.to_json()},
        {"clients", server_->clients()},
        {"printk",
         {{"lines", printk_log_.size()},
          {"last_seq", printk_log_.last_seq()},
          {"evicted", printk_log_.evicted()},
          {"followers", server_->subscribers()},
          {"file_errors", printk_file_failures_}}},
        {"queries",
         {{"requests", server.requests},
          {"errors", server.errors},
          {"refused", server.refused},
          {"forbidden", server.forbidden},
          {"closed_idle", server.closed_idle},
          {"dropped_slow", server.dropped_slow}}},
    };
}

std::variant<nlohmann::json, proto::Error, service::Subscribe> Daemon::handle(const proto::Request& request) {
    keep_up_with_rings();
    switch (request.op) {
        case proto::Op::version:
            return nlohmann::json{
                {"kleakd", kKleakdVersion}, {"protocol", proto::kProtocolVersion}, {"abi", KLEAK_ABI_VERSION}};
        case proto::Op::stats:
            return stats();
        case proto::Op::leaks: {
            if (request.leaks.by != "site") {
                // Processes are known only for allocations that carry a stack (README, "Stacks").
                const auto processes = core::live_processes(pipeline_.tracker(), std::nullopt);
                return process_namer().group(processes, request.leaks.by, request.leaks.sort == proto::LeakSort::bytes,
                                            request.leaks.top);
            }
            name_new_call_sites(Naming::at_most_every_10s);
            core::LeaksQuery query;
            query.top = request.leaks.top;
            query.min_age_ns = request.leaks.min_age_ns;
            query.now_ns = monotonic_now_ns();
            query.sort = request.leaks.sort == proto::LeakSort::bytes ? core::LeakSort::bytes : core::LeakSort::count;
            const std::vector<std::string> caches = slabs_.site_caches(pipeline_.tracker());
            query.site_caches = caches;
            query.family = core::parse_family(request.leaks.family);
            nlohmann::json out =
                core::leaks_to_json(core::query_leaks(pipeline_.tracker(), query, *symbolizer_, &verdicts_), query);
            name_site_processes(out["sites"]);
            return out;
        }
        case proto::Op::suspects: {
            name_new_call_sites(Naming::at_most_every_10s);
            const std::vector<std::string> caches = slabs_.site_caches(pipeline_.tracker());
            const core::SuspectsQuery query{request.suspects.top, monotonic_now_ns(), caches,
                                            core::parse_family(request.suspects.family)};
            nlohmann::json out = core::suspects_to_json(
                core::query_suspects(pipeline_.tracker(), verdicts_, query, *symbolizer_), verdicts_);
            name_site_processes(out["suspects"]);
            return out;
        }
        case proto::Op::history: {
            name_new_call_sites(Naming::at_most_every_10s);
            const auto site = core::find_site(pipeline_.tracker(), request.history.site, *symbolizer_);
            if (!site)
                return proto::Error{proto::ErrorCode::not_found,
                                    "no call site " + request.history.site +
                                        " has allocated since start-up or the last reset (give it as reports print "
                                        "it, e.g. alloc_pipe_info+0x2d, as a function name, or as 0x...)"};
            return core::history_to_json(pipeline_.tracker(), verdicts_, *site, request.history.resolution,
                                         *symbolizer_);
        }
        case proto::Op::caches: {
            nlohmann::json out = core::caches_to_json(slabs_.reconcile(pipeline_.tracker()), request.caches.top);
            out["coverage"] = coverage();
            return out;
        }
        case proto::Op::report:
            return core::report_to_json(build_report());
        case proto::Op::snapshot:
            return snapshot();
        case proto::Op::reset:
            reset();
            return nlohmann::json{{"reset", true}};
        case proto::Op::stacks:
            return stacks_query(request.stacks);
        case proto::Op::capture:
            return capture(request.capture);
        case proto::Op::printk:
            if (!settings_.printk.enabled)
                return proto::Error{proto::ErrorCode::bad_request,
                                    "printk capture is off in this daemon's configuration (printk.enabled)"};
            if (request.printk.follow) return service::Subscribe{printk_query(request.printk)};
            return printk_query(request.printk);
    }
    return proto::Error{proto::ErrorCode::internal, "unhandled op"};
}

void Daemon::write_snapshot() {
    std::optional<std::string> error;
    try {
        const nlohmann::json doc = snapshot();
        // Files carry every site's history too, for a restarted daemon to
        // read back (app/history_restore.h); the `snapshot` query leaves it out.
        const core::HistoryOrigin here{doc.at("boot_id").get<std::string>(),
                                       doc.at("kernel_release").get<std::string>(), verdicts_.period_ns()};
        error = snapshots_.write_text(
            core::snapshot_file_text(doc, core::history_section_text(verdicts_, pipeline_.tracker().sites(), here)),
            std::chrono::system_clock::now());
    } catch (const std::exception& e) {  // allocation failure: still tracing, the next snapshot may fit
        error = std::string("cannot build the snapshot: ") + e.what();
    }
    if (!error) {
        if (snapshot_failures_ > 0) spdlog::info("snapshots are written again ({} failed before)", snapshot_failures_);
        snapshot_failures_ = 0;
        return;
    }
    // Rate-limited: the first failure, then every 60th (an hour at the default interval).
    if (snapshot_failures_++ % 60 == 0) spdlog::warn("writing a snapshot failed: {}; still tracing", *error);
}

// The state as it is now, stored with systemd for a crash to resume from,
// once a checkpoint_interval (its cost at 1M outstanding: bench/RESULTS.md).
// The tracker is complete up to the last watermark released in full: what
// came after (staged, or still in the rings) is in the gap if the daemon dies.
void Daemon::checkpoint() {
    if (tracing_stopped_) return;
    state_.save(core::StateKind::checkpoint, std::max(released_until_ns_, started_ns_), pipeline_, &printk_log_,
                verdicts_);
}

// Every site's outstanding count into its history, and every site judged
// again: a few ms at 5,000 sites, once an interval (10 s by default).
void Daemon::sample_verdicts() {
    if (tracing_stopped_) return;
    const core::Tracker& tracker = pipeline_.tracker();
    const core::Reconciliation caches = slabs_.reconcile(tracker);
    // Frees that name their cache come from 6.1+ kernels only: without any,
    // skip the pass over every class.
    const auto& unseen = tracker.unseen_frees_by_cache();
    const std::vector<std::uint64_t> site_caches =
        unseen.empty() ? std::vector<std::uint64_t>{} : core::site_turnover_keys(tracker);
    verdicts_.sample(tracker.sites(), monotonic_now_ns(),
                     {caches.sites, site_caches, unseen.empty() ? nullptr : &unseen});
    // The growing sites may have changed: they get stacks from now on.
    if (!stacks_.capture().functions.empty()) name_new_call_sites(Naming::at_most_every_10s);
    if (auto error = stacks_.refresh(pipeline_.tracker(), verdicts_, *symbolizer_))
        spdlog::warn("updating the call sites that get stacks failed: {}", *error);
}

std::variant<nlohmann::json, proto::Error, service::Subscribe> Daemon::capture(const proto::CaptureArgs& args) {
    core::StackCapture next;
    next.mode = core::parse_stack_mode(args.stacks).value_or(core::StackMode::suspects);  // validated by the codec
    next.functions = args.functions;
    if (!next.functions.empty()) name_new_call_sites(Naming::whenever_new);
    const std::uint32_t shift = args.sample_shift.value_or(settings_.tracing.stack_sample_shift);
    if (auto error = stacks_.set(std::move(next), shift, pipeline_.tracker(), verdicts_, *symbolizer_))
        return proto::Error{proto::ErrorCode::internal, *error};
    spdlog::info("stacks: capture {} from now on", core::stack_mode_name(stacks_.capture().mode));
    return stacks_.to_json();
}

ProcessNamer Daemon::process_namer() {
    cgroups_.name_new(pipeline_.tracker().processes());
    return ProcessNamer(pipeline_.tracker().processes(), cgroups_.names());
}

// Each row's top comms and cgroups, from its allocations that carry a process
// (README, "Stacks"): one pass over the classes, one /proc read per process.
void Daemon::name_site_processes(nlohmann::json& rows) {
    process_namer().annotate_sites(rows, core::processes_by_site(pipeline_.tracker(), *symbolizer_));
}

nlohmann::json Daemon::stacks_query(const proto::StacksArgs& args) {
    name_new_call_sites(Naming::at_most_every_10s);
    return live_stacks({args.function, args.top});
}

nlohmann::json Daemon::live_stacks(const core::StacksQuery& query) {
    TracerStackSource source(session_.tracer());
    // Every frame the answer shows, named in one kallsyms read at most.
    // None (no stack captured, as on most hosts at most times): no read, so a
    // snapshot costs what it did before stacks.
    frames_to_name_ = core::stack_frame_addresses(pipeline_.tracker(), source, *symbolizer_, query);
    if (!frames_to_name_.empty()) name_new_call_sites(Naming::whenever_new);
    frames_to_name_.clear();
    nlohmann::json out = core::stacks_to_json(pipeline_.tracker(), source, *symbolizer_, query);
    process_namer().annotate_stacks(out);
    stacks_.label(out);
    return out;
}

// A CPU got a new ring (it came online, a restart's went back to size): the
// stored set must name it.
void Daemon::store_replaced_rings() {
    if (session_.rings_replaced() != rings_replaced_stored_) {
        rings_replaced_stored_ = session_.rings_replaced();
        state_.programs_changed(session_.tracer());
    }
}

void Daemon::update_status() {
    store_replaced_rings();
    const std::uint64_t now = monotonic_now_ns();
    const std::uint64_t records = pipeline_.records();
    records_per_second_ = static_cast<double>(records - rate_window_records_) * 1e9 /
                          static_cast<double>(std::max<std::uint64_t>(now - rate_window_ns_, 1));
    rate_window_ns_ = now;
    rate_window_records_ = records;
    std::uint64_t dropped = 0;
    for (const auto d : session_.drops()) dropped += d;
    const auto& totals = pipeline_.tracker().totals();
    notifier_.status(fmt::format("{:.0f} records/s, {} outstanding ({} bytes), {} dropped, {} sites growing",
                                 records_per_second_, totals.outstanding, totals.outstanding_bytes, dropped,
                                 verdicts_.growing()));
}

void Daemon::reset() {
    // What the rings and the readers' copies hold happened before the reset:
    // into the pipeline that is about to forget it, not the fresh one.
    if (!tracing_stopped_) session_.drain_rings_only();
    pipeline_.reset();  // a release in progress is discarded with the rest
    verdicts_.clear();  // site ids start again with the tracker's
    state_.forget();    // a restart after a reset must not bring the old state back
    release_wake_.lower();
    // Modules may have come and gone.
    symbolizer_ = make_kallsyms_symbolizer(command_.kallsyms, tracked_call_sites(), drain_while_symbolizing());
    last_naming_ns_ = 0;
    started_ns_ = rate_window_ns_ = monotonic_now_ns();
    mark_coverage_start();
    rate_window_records_ = 0;
    spdlog::info("reset: history forgotten, a fresh baseline starts now");
}

void Daemon::reload() {
    notifier_.reloading();
    config::ConfigResult result = config::load_config(command_.config_path);
    if (!result.settings) {
        log_config_errors(command_.config_path, result.errors, "reload rejected: ");
        spdlog::error("reload rejected: keeping the configuration in force");
        notifier_.reloaded("reload rejected; previous configuration in force");
        return;
    }
    config::Settings next = std::move(*result.settings);
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    if (next.snapshots != settings_.snapshots) {
        snapshots_.reconfigure(next.snapshots.directory, next.snapshots.retention);
        snapshot_timer_.rearm(next.snapshots.interval);
        checkpoint_timer_.rearm(next.snapshots.checkpoint_interval);
    }
    if (next.socket.group != settings_.socket.group || next.socket.mode != settings_.socket.mode ||
        next.socket.admin_group != settings_.socket.admin_group) {
        service::AccessPolicy policy = access_policy(next.socket);
        if (!owned_socket_.empty()) {
            if (auto error = service::set_socket_access(owned_socket_, next.socket.mode, policy.group))
                spdlog::warn("could not apply the new socket mode/group: {}", *error);
        }
        server_->set_policy(std::move(policy));
    }
    server_->set_limits(server_limits(next.socket));
    if (next.socket.path != settings_.socket.path) {
        spdlog::warn("socket.path changed to {}; it takes effect when kleakd restarts", next.socket.path.string());
        next.socket.path = settings_.socket.path;
    }
    if (next.printk.enabled != settings_.printk.enabled) {
        spdlog::warn("printk.enabled changed; it takes effect when kleakd restarts");
        next.printk.enabled = settings_.printk.enabled;
    }
    printk_log_.set_capacity(next.printk.lines);
    if (next.tracing != settings_.tracing) {
        spdlog::warn("tracing settings changed; they take effect when kleakd restarts");
        next.tracing = settings_.tracing;
    }
    if (next.verdicts != settings_.verdicts) {
        spdlog::warn("verdicts settings changed; they take effect when kleakd restarts");
        next.verdicts = settings_.verdicts;
    }
    settings_ = std::move(next);
    configure_printk_file();
    spdlog::info("configuration reloaded from {}", command_.config_path.string());
    notifier_.reloaded("configuration reloaded");
}

int run_serve(const ServeCommand& command) {
    config::ConfigResult result = config::load_config(command.config_path);
    if (!result.settings) {
        log_config_errors(command.config_path, result.errors, "");
        return 1;
    }
    spdlog::set_level(spdlog::level::from_str(result.settings->log_level));
    SignalFd signals{SIGINT, SIGTERM, SIGHUP};
    Daemon daemon(command, std::move(*result.settings), signals);
    // As trace and record do, and as kleakd.service's Nice= does: started from
    // a shell at nice 0 on a loaded host, the daemon lost records (bench/soak.py).
    raise_priority_to(kTracingNice);
    daemon.run();
    return 0;
}

int run_check_config(const std::filesystem::path& path) {
    const config::ConfigResult result = config::load_config(path);
    if (!result.settings) {
        std::fputs(config::format_errors(path, result.errors).c_str(), stderr);
        return 1;
    }
    std::printf("%s: OK\n", path.c_str());
    return 0;
}

}  // namespace kleak
