#include "exporter/scrape.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "client/client.h"
#include "version.h"

namespace kleak::exporter {

namespace {

constexpr auto kRepeatLogEvery = std::chrono::minutes(10);

nlohmann::json result_of(const proto::Response& response, const char* op) {
    if (!response.ok)
        throw ctl::ClientError(std::string("kleakd refused `") + op + "`: " +
                               (response.error ? response.error->message : std::string("no error message")));
    return response.result;
}

}  // namespace

Scraper::Scraper(ScrapeOptions options) : options_(std::move(options)) {}

std::string Scraper::scrape(Format format) {
    const std::lock_guard lock(mutex_);
    const auto start = std::chrono::steady_clock::now();
    std::vector<prometheus::MetricFamily> families;
    double took = 0;
    try {
        ctl::Client client(options_.socket);
        client.set_timeout(options_.timeout);
        DaemonReplies replies;
        proto::Request request;
        request.id = 1;
        request.op = proto::Op::version;
        replies.version = result_of(client.call(request), "version");
        request.id = 2;
        request.op = proto::Op::stats;
        replies.stats = result_of(client.call(request), "stats");
        // The max_sites most suspect sites; the daemon sums the others into
        // `rest` (site="other"). Asking for every row instead costs the
        // daemon ~13x more at 5,000 sites (bench/RESULTS.md).
        request.id = 3;
        request.op = proto::Op::suspects;
        request.suspects.top = static_cast<std::uint32_t>(options_.metrics.max_sites);
        replies.suspects = result_of(client.call(request), "suspects");
        took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        families = daemon_metrics(replies, options_.metrics);
        note_success();
    } catch (const std::exception& e) {  // ClientError, ReplyError, a malformed reply
        families = daemon_down_metrics();
        note_failure(e.what());
    }
    for (auto& f : exporter_metrics(kKleakdVersion, took)) families.push_back(std::move(f));
    return serialize(families, format);
}

std::optional<std::string> Scraper::last_failure() {
    const std::lock_guard lock(mutex_);
    return last_failure_;
}

void Scraper::note_failure(const std::string& why) {
    const auto now = std::chrono::steady_clock::now();
    if (last_failure_ != why || now - last_logged_ >= kRepeatLogEvery) {
        spdlog::warn("kleakd_up 0: {}", why);
        last_logged_ = now;
    }
    last_failure_ = why;
}

void Scraper::note_success() {
    if (last_failure_) spdlog::info("kleakd answers again (kleakd_up 1)");
    last_failure_.reset();
}

}  // namespace kleak::exporter
