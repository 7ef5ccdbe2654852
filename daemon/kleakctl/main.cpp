// kleakctl: query a running kleakd over its Unix socket.
#include <CLI/CLI.hpp>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include "core/printk_json.h"
#include "core/stacks_query.h"
#include "client/client.h"
#include "kleakctl/format.h"
#include "kleakctl/html_command.h"
#include "kleakctl/snapshot_diff.h"
#include "version.h"

namespace {

using kleak::proto::Op;

struct Options {
    std::string socket;
    bool json = false;
    std::uint32_t top = 20;
    std::uint32_t caches_top = 0;
    std::string min_age = "0s";
    std::string sort = "bytes";
    std::string family;  // "": every family
    std::size_t report_top = 10;
    bool follow = false;
    double since_seconds = 0;
    std::uint64_t after_seq = 0;
    std::string level = "debug";
    std::uint32_t limit = 0;
    std::string site;
    std::string resolution = "sample";
    std::vector<std::string> snapshots;  // diff: OLD NEW
    double timeout_seconds = 60;
    std::string html_output;    // report --html FILE, html -o FILE
    std::string html_snapshot;  // html SNAPSHOT.json
    std::size_t curves = 8;
    std::string stacks_function;           // stacks FUNCTION
    std::vector<std::string> capture;      // stacks --capture MODE | FUNCTION...
    std::optional<std::uint32_t> stacks_sample_shift;  // stacks --capture all --sample-shift N
    bool folded = false;
    std::string weight = "bytes";
    std::string by = "site";  // leaks --by
};

nlohmann::json read_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
        throw std::runtime_error(path + " is not JSON (the parser stopped at byte " + std::to_string(e.byte) + ")");
    }
}

// `diff` reads two files and needs no daemon.
int run_diff(const Options& options) {
    try {
        const auto diff = kleak::ctl::diff_snapshots(read_json_file(options.snapshots.at(0)),
                                                     read_json_file(options.snapshots.at(1)));
        if (options.json)
            std::cout << kleak::ctl::diff_to_json(diff, options.top).dump(2) << '\n';
        else
            std::cout << kleak::ctl::format_diff(diff, options.top);
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "kleakctl: diff: " << e.what() << '\n';
        return 1;
    }
}

// `html` reads a file and needs no daemon.
int run_html(const Options& options) {
    try {
        kleak::ctl::HtmlOptions html;
        html.output = options.html_output.empty() ? kleak::ctl::default_html_output(options.html_snapshot)
                                                  : options.html_output;
        html.curves = options.curves;
        return kleak::ctl::html_from_snapshot(options.html_snapshot, html);
    } catch (const nlohmann::json::exception& e) {
        std::cerr << "kleakctl: html: " << options.html_snapshot << " is not a kleakd snapshot: " << e.what() << '\n';
    } catch (const std::exception& e) {
        std::cerr << "kleakctl: html: " << e.what() << '\n';
    }
    return 1;
}

// kleakctl history --resolution: the history tiers (core/site_history.h).
constexpr std::array<const char*, 4> kResolutions{"sample", "1m", "10m", "2h"};

// Prints a printk result's lines as dmesg would, or as JSON lines.
void print_printk_lines(const nlohmann::json& result, bool json) {
    for (const auto& line : result.at("lines")) {
        if (json) {
            std::cout << line.dump() << '\n';
        } else {
            std::cout << kleak::core::format_printk_line(kleak::core::printk_line_from_json(line)) << '\n';
        }
    }
    std::cout.flush();
}

int print_result(Op op, const Options& options, const nlohmann::json& result) {
    if (op == Op::printk) {
        print_printk_lines(result, options.json);
        return 0;
    }
    if ((options.json && !options.folded) || op == Op::snapshot) {
        std::cout << result.dump(2) << '\n';
        return 0;
    }
    switch (op) {
        case Op::leaks:
            std::cout << (result.contains("by") ? kleak::ctl::format_leaks_by(result) : kleak::ctl::format_leaks(result));
            break;
        case Op::stats:
            std::cout << kleak::ctl::format_stats(result);
            break;
        case Op::report:
            std::cout << kleak::ctl::format_report(result, options.report_top);
            break;
        case Op::version:
            std::cout << kleak::ctl::format_version(result, kKleakdVersion);
            break;
        case Op::reset:
            std::cout << "kleakd forgot its history; a fresh baseline starts now\n";
            break;
        case Op::suspects:
            std::cout << kleak::ctl::format_suspects(result);
            break;
        case Op::history:
            std::cout << kleak::ctl::format_history(result);
            break;
        case Op::caches:
            std::cout << kleak::ctl::format_caches(result);
            break;
        case Op::stacks:
            if (options.folded && !kleak::core::sampled_note(result).empty())
                std::cerr << "kleakctl: " << kleak::core::sampled_note(result) << '\n';  // stdout stays folded lines
            if (options.folded)
                std::cout << kleak::core::folded_stacks(result, options.weight == "count" ? kleak::core::StackWeight::count
                                                                                       : kleak::core::StackWeight::bytes);
            else
                std::cout << kleak::ctl::format_stacks(result);
            break;
        case Op::capture:
            std::cout << kleak::ctl::format_capture(result);
            break;
        case Op::printk:  // printed above
        case Op::snapshot:
            break;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"kleakctl - query a running kleakd: current leaks, statistics, the kleak report"};
    app.set_version_flag("--version", std::string("kleakctl ") + kKleakdVersion);
    app.require_subcommand(1);
    app.fallthrough();  // --socket and --json also work after the subcommand
    Options options;
    app.add_option("--socket,-s", options.socket,
                   "kleakd's socket (default: $KLEAKD_SOCKET, else /run/kleakd/kleakd.sock)");
    app.add_flag("--json,-j", options.json, "Print the daemon's raw JSON result");
    app.add_option("--timeout,-t", options.timeout_seconds,
                   "Seconds to wait for kleakd's answer before giving up (0: forever; a followed stream waits "
                   "forever after its first reply)")
        ->check(CLI::Range(0.0, 86400.0))
        ->default_str("60");
    app.footer("Exit status: 0 on success, 1 if kleakd cannot be reached or answers with an error, 2 on usage errors.");

    auto* leaks = app.add_subcommand("leaks", "Top call sites by outstanding (never freed) memory");
    leaks->add_option("--top,-n", options.top, "How many call sites")->check(CLI::Range(1, 100000))->default_str("20");
    leaks->add_option("--min-age", options.min_age,
                      "Count only allocations at least this old: 500ms, 30s, 5m, 1h, 1d (one that became that old "
                      "within the last 1/16 of it or 16.8 ms, whichever is longer, may be left out)")
        ->default_str("0s");
    leaks->add_option("--sort", options.sort, "Order by outstanding bytes or count")
        ->check(CLI::IsMember({"bytes", "count"}))
        ->default_str("bytes");
    leaks->add_option("--family,-F", options.family, "Only one allocator family's call sites: slab, page, percpu, vmalloc")
        ->check(CLI::IsMember({"slab", "page", "percpu", "vmalloc"}));
    leaks
        ->add_option("--by", options.by,
                     "Group by call site, or by the allocating process's comm or cgroup (v2 path) as at the allocation: only allocations "
                     "that carry a kernel stack have a process (see `stacks`); --min-age and --family apply to "
                     "sites only")
        ->check(CLI::IsMember({"site", "comm", "cgroup"}))
        ->default_str("site");
    auto* suspects = app.add_subcommand(
        "suspects",
        "Call sites ranked by how likely they leak: growing ones first, with their verdicts, reasons, growth per "
        "hour and the ages of their live allocations");
    suspects->add_option("--top,-n", options.top, "How many call sites")->check(CLI::Range(1, 100000))->default_str("20");
    suspects->add_option("--family,-F", options.family, "Only one allocator family's call sites: slab, page, percpu, vmalloc")
        ->check(CLI::IsMember({"slab", "page", "percpu", "vmalloc"}));
    auto* history = app.add_subcommand("history", "One call site's outstanding count and bytes over time");
    history->add_option("site", options.site, "The call site as reports print it (alloc_pipe_info+0x2d), a function "
                                              "name (its largest site), or an address (0xffffffff...)")
        ->required();
    history->add_option("--resolution,-r", options.resolution,
                        "sample (every sample: the last 91, at verdicts.interval), 1m (2 hours), 10m (a day), 2h (30 "
                        "days)")
        ->check(CLI::IsMember({"sample", "1m", "10m", "2h"}))
        ->default_str("sample");
    auto* diff = app.add_subcommand(
        "diff", "What grew between two snapshot files (as kleakd writes them, or `kleakctl snapshot` prints them), "
                "site by site, most bytes gained first; needs no daemon");
    diff->add_option("snapshots", options.snapshots, "OLD.json NEW.json")->required()->expected(2)->check(CLI::ExistingFile);
    diff->add_option("--top,-n", options.top, "How many call sites (0: all)")->check(CLI::Range(0, 100000))->default_str("20");
    auto* caches = app.add_subcommand(
        "caches", "Per slab cache: kleakd's live objects against the kernel's active ones (/proc/slabinfo); a cache "
                  "where kleakd counts more has frees it cannot see. Then the page, percpu and vmalloc families "
                  "against the kernel's counters (/proc/meminfo, /proc/vmstat)");
    caches->add_option("--top,-n", options.caches_top, "How many caches, most live objects first (0: all)")
        ->check(CLI::Range(0, 100000))
        ->default_str("0");
    auto* stacks = app.add_subcommand(
        "stacks", "Live memory per kernel stack, per call site, most bytes first (stacks are captured at the sites "
                  "judged growing and those --capture names, or everywhere with --capture all: README, \"Stacks\")");
    stacks->add_option("function", options.stacks_function, "Only the call sites in this function");
    stacks->add_option("--top,-n", options.top, "How many stacks (0: all)")->check(CLI::Range(0, 100000))->default_str("20");
    stacks->add_flag("--folded", options.folded,
                     "Print folded stacks (outer;...;inner WEIGHT), for flamegraph.pl, inferno or speedscope");
    stacks->add_option("--weight", options.weight, "With --folded: weigh each stack by its live bytes or count")
        ->check(CLI::IsMember({"bytes", "count"}))
        ->default_str("bytes");
    stacks
        ->add_option("--capture", options.capture,
                     "Change which allocations get a stack from now on, then print the capture in force: suspects "
                     "(the growing sites), all, off, or FUNCTION... (suspects, plus every call site in these "
                     "functions). Root or socket.admin_group only: it changes what tracing costs")
        ->expected(1, static_cast<int>(kleak::proto::kMaxCaptureFunctions));
    stacks->add_option("--sample-shift", options.stacks_sample_shift,
                       "With --capture all: a stack for 1 in 2^N allocations, by a hash of the pointer (default: the "
                       "daemon's tracing.stack_sample_shift)")
        ->check(CLI::Range(0, 32));
    auto* stats = app.add_subcommand("stats", "Event rates, totals, drops per CPU, late records, tracker memory");
    auto* report = app.add_subcommand("report", "The full kleak report (same JSON as `kleakd report --json`)");
    report->add_option("--top,-n", options.report_top, "Rows per report section (0: all)")->default_str("10");
    report->add_option("--html", options.html_output,
                       "Write the report as one self-contained HTML page to FILE instead (\"-\": standard output): "
                       "a flame graph of outstanding bytes, the growth curves of the suspect sites, the verdict "
                       "table and the loss line; it needs no network to open")
        ->type_name("FILE");
    report->add_option("--curves", options.curves, "With --html: how many growth curves, most likely leaks first")
        ->check(CLI::Range(0, 100))
        ->default_str("8");
    auto* html = app.add_subcommand(
        "html", "The HTML report (as `report --html`) of a snapshot file, as kleakd writes them (with its site "
                "histories: growth curves) or `kleakctl snapshot` prints them (without); needs no daemon");
    html->add_option("snapshot", options.html_snapshot, "SNAPSHOT.json")->required()->check(CLI::ExistingFile);
    html->add_option("--output,-o", options.html_output,
                     "Where to write the page (\"-\": standard output; default: the snapshot's name with .html, in "
                     "the current directory)")
        ->type_name("FILE");
    html->add_option("--curves", options.curves, "How many growth curves, most likely leaks first")
        ->check(CLI::Range(0, 100))
        ->default_str("8");
    auto* snapshot = app.add_subcommand("snapshot", "A full JSON snapshot, as written to the snapshot directory");
    auto* reset = app.add_subcommand(
        "reset", "Forget all history and start a fresh baseline (root or socket.admin_group only; it changes state)");
    auto* version = app.add_subcommand("version", "kleakctl's and kleakd's versions");
    auto* printk = app.add_subcommand("printk", "The kernel log kleakd captured, merged across CPUs in time order");
    printk->add_flag("--follow,-f", options.follow, "Keep printing new lines until interrupted");
    printk
        ->add_option("--since", options.since_seconds,
                     "Only lines at or after this time, in seconds since boot (the [time] dmesg shows)")
        ->check(CLI::NonNegativeNumber);
    printk->add_option("--after-seq", options.after_seq, "Only lines after this sequence number (resume a follow)");
    printk->add_option("--level,-l", options.level, "Only lines at this level or more severe")
        ->check(CLI::IsMember({"emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"}))
        ->default_str("debug");
    printk->add_option("--limit,-n", options.limit, "Only the newest N lines (0: all kept)")->default_str("0");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? 0 : 2;
    }

    if (*diff) return run_diff(options);
    if (*html) return run_html(options);

    kleak::proto::Request request;
    request.id = 1;
    if (*leaks) {
        request.op = Op::leaks;
        request.leaks.top = options.top;
        request.leaks.sort = options.sort == "count" ? kleak::proto::LeakSort::count : kleak::proto::LeakSort::bytes;
        std::string why;
        const auto age = kleak::proto::parse_duration_ns(nlohmann::json(options.min_age), why);
        if (!age) {
            std::cerr << "kleakctl: --min-age: " << why << '\n';
            return 2;
        }
        request.leaks.min_age_ns = *age;
        request.leaks.family = options.family;
        request.leaks.by = options.by;
    } else if (*suspects) {
        request.op = Op::suspects;
        request.suspects.top = options.top;
        request.suspects.family = options.family;
    } else if (*history) {
        request.op = Op::history;
        request.history.site = options.site;
        for (std::size_t i = 0; i < kResolutions.size(); ++i)
            if (options.resolution == kResolutions[i]) request.history.resolution = static_cast<std::uint32_t>(i);
    } else if (*caches) {
        request.op = Op::caches;
        request.caches.top = options.caches_top;
    } else if (*stacks && !options.capture.empty()) {
        request.op = Op::capture;
        const std::string& first = options.capture.front();
        if (options.capture.size() == 1 && (first == "suspects" || first == "all" || first == "off")) {
            request.capture.stacks = first;
        } else {
            request.capture.stacks = "suspects";
            request.capture.functions = options.capture;
        }
        request.capture.sample_shift = options.stacks_sample_shift;
    } else if (*stacks) {
        request.op = Op::stacks;
        request.stacks.function = options.stacks_function;
        request.stacks.top = options.top;
    } else if (*stats) {
        request.op = Op::stats;
    } else if (*report) {
        request.op = Op::report;
    } else if (*snapshot) {
        request.op = Op::snapshot;
    } else if (*reset) {
        request.op = Op::reset;
    } else if (*version) {
        request.op = Op::version;
    } else if (*printk) {
        request.op = Op::printk;
        request.printk.follow = options.follow;
        request.printk.since_ns = static_cast<std::uint64_t>(options.since_seconds * 1e9);
        request.printk.after_seq = options.after_seq;
        request.printk.limit = options.limit;
        request.printk.level = kleak::proto::printk_level_from_name(options.level).value_or(7);
    }

    try {
        kleak::ctl::Client client(kleak::ctl::socket_path(options.socket));
        client.set_timeout(std::chrono::milliseconds(static_cast<std::int64_t>(options.timeout_seconds * 1000)));
        if (*report && !options.html_output.empty()) {
            kleak::ctl::HtmlOptions html_options;
            html_options.output = options.html_output;
            html_options.curves = options.curves;
            return kleak::ctl::html_from_daemon(client, kleak::ctl::socket_path(options.socket), html_options);
        }
        const kleak::proto::Response response = client.call(request);
        if (request.op == Op::printk && request.printk.follow) client.set_timeout(std::chrono::milliseconds(0));
        if (!response.ok) {
            std::cerr << "kleakctl: kleakd refused: " << kleak::proto::error_code_name(response.error->code) << ": "
                      << response.error->message << '\n';
            return 1;
        }
        const int status = print_result(request.op, options, response.result);
        while (request.op == Op::printk && request.printk.follow) {
            const kleak::proto::Response more = client.next(request.id);
            if (!more.ok) {
                std::cerr << "kleakctl: kleakd stopped the stream: " << kleak::proto::error_code_name(more.error->code)
                          << ": " << more.error->message << '\n';
                return 1;
            }
            print_printk_lines(more.result, options.json);
        }
        return status;
    } catch (const kleak::ctl::ClientError& e) {
        std::cerr << "kleakctl: " << e.what() << '\n';
        return 1;
    } catch (const nlohmann::json::exception& e) {
        std::cerr << "kleakctl: unexpected reply from kleakd: " << e.what() << '\n';
        return 1;
    }
}
