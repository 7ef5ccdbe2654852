// kleakd-exporter against a fake kleakd (a real Unix socket answering the
// canned replies in tests/fixtures/exporter/replies.json) and over real HTTP.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "exporter/daemon_metrics.h"
#include "exporter/exposition.h"
#include "exporter/http_server.h"
#include "exporter/listen_socket.h"
#include "exporter/scrape.h"
#include "exporter/textfile.h"
#include "proto/protocol.h"

namespace kleak::exporter {
namespace {

nlohmann::json canned() {
    std::ifstream in(std::string(KLEAK_FIXTURES_DIR) + "/exporter/replies.json");
    return nlohmann::json::parse(in);
}

DaemonReplies replies_from(const nlohmann::json& j) { return {j.at("version"), j.at("stats"), j.at("suspects")}; }

bool has_line(const std::string& text, const std::string& line) {
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
        if (l == line) return true;
    return false;
}

// The value of the sample whose name and labels are `series`; NaN if none.
double value_of(const std::string& text, const std::string& series) {
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
        if (l.size() > series.size() && l.compare(0, series.size(), series) == 0 && l[series.size()] == ' ')
            return std::stod(l.substr(series.size() + 1));
    return std::nan("");
}

std::filesystem::path temp_dir() {
    auto dir = std::filesystem::temp_directory_path() /
               ("kleakd-exporter-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

// Serves the canned replies, by op, on a Unix socket until destroyed.
class FakeKleakd {
public:
    FakeKleakd(std::filesystem::path path, nlohmann::json replies) : path_(std::move(path)), replies_(std::move(replies)) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
        EXPECT_EQ(::listen(fd_, 8), 0);
        thread_ = std::thread([this] { run(); });
    }
    ~FakeKleakd() {
        ::shutdown(fd_, SHUT_RDWR);
        thread_.join();
        ::close(fd_);
    }
    int connections() const { return connections_; }

private:
    void run() {
        for (;;) {
            const int client = ::accept(fd_, nullptr, nullptr);
            if (client < 0) return;
            ++connections_;
            proto::LineReader reader;
            char buf[4096];
            std::string line;
            for (ssize_t n; (n = ::recv(client, buf, sizeof buf, 0)) > 0;) {
                reader.feed({buf, static_cast<std::size_t>(n)});
                while (reader.next(line) == proto::LineReader::Status::line) {
                    const auto decoded = proto::decode_request(line);
                    ASSERT_TRUE(decoded.request);
                    const std::string op(proto::op_name(decoded.request->op));
                    // The exporter asks for its --max-sites rows (default 50).
                    if (op == "suspects") {
                        EXPECT_EQ(decoded.request->suspects.top, kDefaultMaxSites);
                    }
                    const std::string reply =
                        replies_.contains(op)
                            ? proto::encode_result(decoded.request->id, replies_.at(op))
                            : proto::encode_error(decoded.request->id, {proto::ErrorCode::unknown_op, "no " + op});
                    ::send(client, reply.data(), reply.size(), MSG_NOSIGNAL);
                }
            }
            ::close(client);
        }
    }

    std::filesystem::path path_;
    nlohmann::json replies_;
    int fd_ = -1;
    std::atomic<int> connections_{0};
    std::thread thread_;
};

TEST(ExporterMetrics, NamesValuesAndLabelsFromCannedReplies) {
    const std::string text = serialize(daemon_metrics(replies_from(canned()), {}), Format::prometheus_text);
    EXPECT_TRUE(has_line(text, "kleakd_up 1")) << text;
    EXPECT_TRUE(has_line(text, "# TYPE kleakd_records_total counter")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_records_total 1250000")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_uptime_seconds 3600.5")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_dropped_records_total{cpu=\"0\"} 0")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_dropped_records_total{cpu=\"1\"} 3")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_dropped_records_total{cpu=\"2\"} 2")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_late_records_total 2")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_recursion_misses_total 7")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_tracker_memory_bytes 4096")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_printk_lines_total 40")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_outstanding_allocations 3100")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_outstanding_bytes 1980000")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_growing_sites 1")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_build_info{version=\"0.1.0\",protocol=\"1\",abi=\"3\",kernel=\"6.18.0-test\","
                               "attach=\"tp_btf\"} 1"))
        << text;
    const std::string pipe =
        "{site=\"alloc_pipe_info+0xd7\",function=\"alloc_pipe_info\",family=\"slab\",cache=\"kmalloc-cg-1k\","
        "verdict=\"growing\"}";
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_allocations" + pipe + " 1800")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_bytes" + pipe + " 1843200")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_growth_allocations_per_second" + pipe + " 2")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_growth_bytes_per_second" + pipe + " 2048")) << text;
}

TEST(ExporterMetrics, LabelValuesAreEscaped) {
    const std::string text = serialize(daemon_metrics(replies_from(canned()), {}), Format::prometheus_text);
    // The fixture's function is: odd"fn\x<newline>end
    const std::string odd = "{site=\"odd\\\"fn\\\\x\\nend+0x1f [mod]\",function=\"odd\\\"fn\\\\x\\nend\",family=\"slab\","
                            "cache=\"\",verdict=\"young\"}";
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_allocations" + odd + " 700")) << text;
    const std::string om = serialize(daemon_metrics(replies_from(canned()), {}), Format::openmetrics);
    EXPECT_TRUE(has_line(om, "kleakd_site_outstanding_allocations" + odd + " 700")) << om;
}

TEST(ExporterMetrics, TheDaemonsRestIsTheOtherSeries) {
    // The reply's `rest`: the sites the daemon did not send, summed.
    const std::string text = serialize(daemon_metrics(replies_from(canned()), {}), Format::prometheus_text);
    const std::string other = "{site=\"other\",function=\"\",family=\"\",cache=\"\",verdict=\"\"}";
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_allocations" + other + " 1000")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_bytes" + other + " 50000")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_growth_allocations_per_second" + other + " 1")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_growth_bytes_per_second" + other + " 10")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_sites 14")) << text;
    // A reply without `rest` is one the exporter does not understand.
    nlohmann::json j = canned();
    j["suspects"].erase("rest");
    EXPECT_THROW(daemon_metrics(replies_from(j), {}), ReplyError);
}

TEST(ExporterMetrics, RowsPastTheCapAreAddedToOther) {
    const std::string text = serialize(daemon_metrics(replies_from(canned()), {.max_sites = 2}), Format::prometheus_text);
    const std::string other = "{site=\"other\",function=\"\",family=\"\",cache=\"\",verdict=\"\"}";
    // `rest` plus the 3rd and 4th rows: 1000 + 400 + 200 allocations,
    // 50000 + 76000 + 16000 bytes, (3600 - 36 + 72)/h = 1.01/s,
    // (36000 - 6840 + 5760)/h = 9.7/s.
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_allocations" + other + " 1600")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_outstanding_bytes" + other + " 142000")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_site_growth_allocations_per_second" + other + " 1.01")) << text;
    EXPECT_NEAR(value_of(text, "kleakd_site_growth_bytes_per_second" + other), 9.7, 1e-9) << text;
    EXPECT_EQ(text.find("proc_alloc_inode"), std::string::npos) << text;
    EXPECT_NE(text.find("alloc_pipe_info+0xd7"), std::string::npos) << text;
    // 2 sites + other, for each of the 4 per-site families.
    std::size_t series = 0;
    for (std::size_t at = 0; (at = text.find("\nkleakd_site_", at)) != std::string::npos; ++at) ++series;
    EXPECT_EQ(series, 12u) << text;
    // With nothing left over, `other` is still there, at 0.
    nlohmann::json j = canned();
    for (auto& [key, value] : j["suspects"]["rest"].items()) value = 0;
    const std::string all = serialize(daemon_metrics(replies_from(j), {}), Format::prometheus_text);
    EXPECT_TRUE(has_line(all, "kleakd_site_outstanding_allocations" + other + " 0")) << all;
}

TEST(ExporterMetrics, OpenMetricsNamesCounterFamiliesWithoutTotalAndEnds) {
    const std::string om = serialize(daemon_metrics(replies_from(canned()), {}), Format::openmetrics);
    EXPECT_TRUE(has_line(om, "# TYPE kleakd_records counter")) << om;
    EXPECT_TRUE(has_line(om, "kleakd_records_total 1250000")) << om;
    EXPECT_TRUE(has_line(om, "# TYPE kleakd_up gauge")) << om;
    EXPECT_TRUE(om.ends_with("\n# EOF\n")) << om;
    EXPECT_EQ(om.find("# TYPE kleakd_records_total"), std::string::npos);
}

TEST(ExporterMetrics, ContentNegotiation) {
    // What Prometheus 2.42 sends.
    EXPECT_EQ(negotiate_format("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                               "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
              Format::openmetrics);
    EXPECT_EQ(negotiate_format("text/plain"), Format::prometheus_text);
    EXPECT_EQ(negotiate_format(""), Format::prometheus_text);
}

TEST(ExporterMetrics, AReplyMissingAFieldIsAnError) {
    nlohmann::json j = canned();
    j["stats"].erase("totals");
    try {
        daemon_metrics(replies_from(j), {});
        FAIL() << "no ReplyError";
    } catch (const ReplyError& e) {
        EXPECT_NE(std::string(e.what()).find("stats.totals"), std::string::npos) << e.what();
    }
}

TEST(ExporterScrape, ScrapesAFakeKleakdOverItsSocket) {
    const auto dir = temp_dir();
    FakeKleakd daemon(dir / "kleakd.sock", canned());
    Scraper scraper({dir / "kleakd.sock", std::chrono::seconds(5), {}});
    const std::string text = scraper.scrape(Format::prometheus_text);
    EXPECT_TRUE(has_line(text, "kleakd_up 1")) << text;
    EXPECT_TRUE(has_line(text, "kleakd_outstanding_allocations 3100")) << text;
    EXPECT_NE(text.find("kleakd_exporter_build_info{version=\""), std::string::npos) << text;
    EXPECT_FALSE(scraper.last_failure());
    // One fresh connection per scrape.
    scraper.scrape(Format::prometheus_text);
    EXPECT_EQ(daemon.connections(), 2);
    std::filesystem::remove_all(dir);
}

TEST(ExporterScrape, UnreachableDaemonIsUpZeroAndSaysWhy) {
    const auto dir = temp_dir();
    Scraper scraper({dir / "nothing.sock", std::chrono::seconds(1), {}});
    const std::string text = scraper.scrape(Format::prometheus_text);
    EXPECT_TRUE(has_line(text, "kleakd_up 0")) << text;
    // Nothing about the daemon that would look current.
    EXPECT_EQ(text.find("kleakd_records_total"), std::string::npos) << text;
    EXPECT_EQ(text.find("kleakd_site_"), std::string::npos) << text;
    EXPECT_TRUE(has_line(text, "kleakd_exporter_scrape_duration_seconds 0")) << text;
    ASSERT_TRUE(scraper.last_failure());
    EXPECT_NE(scraper.last_failure()->find("no socket at " + (dir / "nothing.sock").string()), std::string::npos)
        << *scraper.last_failure();
    std::filesystem::remove_all(dir);
}

TEST(ExporterScrape, AnUnreadableReplyIsUpZero) {
    const auto dir = temp_dir();
    nlohmann::json j = canned();
    j["stats"].erase("dropped_per_cpu");
    FakeKleakd daemon(dir / "kleakd.sock", j);
    Scraper scraper({dir / "kleakd.sock", std::chrono::seconds(5), {}});
    EXPECT_TRUE(has_line(scraper.scrape(Format::prometheus_text), "kleakd_up 0"));
    ASSERT_TRUE(scraper.last_failure());
    EXPECT_NE(scraper.last_failure()->find("stats.dropped_per_cpu"), std::string::npos) << *scraper.last_failure();
    std::filesystem::remove_all(dir);
}

class ExporterHttp : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = temp_dir();
        daemon_.emplace(dir_ / "kleakd.sock", canned());
        scraper_.emplace(ScrapeOptions{dir_ / "kleakd.sock", std::chrono::seconds(5), {}});
        const ListenSocket s = bind_listen_socket("127.0.0.1:0");
        sockaddr_in addr{};
        socklen_t len = sizeof addr;
        ASSERT_EQ(::getsockname(s.fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
        port_ = ntohs(addr.sin_port);
        server_.emplace([this](Format f) { return scraper_->scrape(f); });
        server_->adopt(s.fd);
        thread_ = std::thread([this] { server_->serve(); });
    }
    void TearDown() override {
        server_->stop();
        thread_.join();
        std::filesystem::remove_all(dir_);
    }

    std::filesystem::path dir_;
    std::optional<FakeKleakd> daemon_;
    std::optional<Scraper> scraper_;
    std::optional<MetricsServer> server_;
    std::thread thread_;
    int port_ = 0;
};

TEST_F(ExporterHttp, ServesMetricsInBothFormats) {
    httplib::Client client("127.0.0.1", port_);
    auto res = client.Get("/metrics");
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_TRUE(has_line(res->body, "kleakd_up 1")) << res->body;

    res = client.Get("/metrics", {{"Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    EXPECT_TRUE(res->body.ends_with("# EOF\n"));
}

TEST_F(ExporterHttp, EveryOtherPathIsNotFound) {
    httplib::Client client("127.0.0.1", port_);
    for (const char* path : {"/", "/metrics/", "/metricsx", "/debug", "/../etc/passwd"}) {
        auto res = client.Get(path);
        ASSERT_TRUE(res) << path;
        EXPECT_EQ(res->status, 404) << path;
        EXPECT_EQ(res->body.find("kleakd_up"), std::string::npos) << path;
    }
    auto res = client.Post("/metrics", "x", "text/plain");
    ASSERT_TRUE(res);
    EXPECT_NE(res->status, 200);
}

TEST(ExporterListen, RejectsAnAddressWithoutAPort) {
    EXPECT_THROW(bind_listen_socket("localhost"), ListenError);
    EXPECT_THROW(bind_listen_socket("127.0.0.1:"), ListenError);
    EXPECT_THROW(bind_listen_socket("no-such-host.invalid:9785"), ListenError);
}

TEST(ExporterTextfile, WritesAtomicallyAndReadableByAll) {
    const auto dir = temp_dir();
    const auto file = dir / "kleakd.prom";
    ::umask(077);
    ASSERT_FALSE(write_textfile(file, "kleakd_up 1\n"));
    ASSERT_FALSE(write_textfile(file, "kleakd_up 0\n"));
    std::ifstream in(file);
    std::stringstream got;
    got << in.rdbuf();
    EXPECT_EQ(got.str(), "kleakd_up 0\n");
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);
    // No temporary file left behind.
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);
    ::umask(022);
    const auto error = write_textfile(dir / "missing" / "kleakd.prom", "x");
    ASSERT_TRUE(error);
    EXPECT_NE(error->find("missing"), std::string::npos) << *error;
    std::filesystem::remove_all(dir);
}

// The canned exposition through `promtool check metrics` (Prometheus' own
// linter: names, suffixes, HELP, label escaping).
TEST(ExporterMetrics, PromtoolFindsNothingWrong) {
    if (std::system("command -v promtool >/dev/null") != 0) GTEST_FAIL() << "promtool is missing (install prometheus)";
    const auto dir = temp_dir();
    std::ofstream(dir / "scrape.prom") << serialize(daemon_metrics(replies_from(canned()), {.max_sites = 2}),
                                                    Format::prometheus_text);
    const std::string cmd = "promtool check metrics < " + (dir / "scrape.prom").string() + " > " +
                            (dir / "out.txt").string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream in(dir / "out.txt");
    std::stringstream out;
    out << in.rdbuf();
    EXPECT_EQ(rc, 0) << out.str();
    EXPECT_EQ(out.str(), "") << out.str();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kleak::exporter
