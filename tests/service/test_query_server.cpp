// The query server on a real Unix socket with a stub handler: streams
// (subscriptions) and what happens to a follower that stops reading.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <new>
#include <stdexcept>
#include <thread>

#include "kernel/event_loop.h"
#include "service/query_server.h"

namespace kleak::service {
namespace {

// Answers `version`, subscribes `printk` with the request's follow flag,
// fails `report` with bad_alloc and `snapshot` with another exception.
class StubHandler final : public QueryHandler {
public:
    std::variant<nlohmann::json, proto::Error, Subscribe> handle(const proto::Request& request) override {
        if (request.op == proto::Op::printk && request.printk.follow)
            return Subscribe{{{"lines", nlohmann::json::array()}}};
        if (request.op == proto::Op::report) throw std::bad_alloc();
        if (request.op == proto::Op::snapshot) throw std::runtime_error("the disk caught fire");
        return nlohmann::json{{"op", proto::op_name(request.op)}};
    }
};

class QueryServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ =
            std::filesystem::temp_directory_path() / ("kleakd-qs-" + std::to_string(::getpid()) + "-" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        path_ = dir_ / "s.sock";
        server_.emplace(loop_, listen_unix(path_, 0600, std::nullopt), AccessPolicy{}, handler_, limits_);
    }
    void TearDown() override {
        server_.reset();
        std::filesystem::remove_all(dir_);
    }

    UniqueFd connect_client(int rcvbuf = 0) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (rcvbuf) ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
        EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
        return fd;
    }

    // Runs the loop until it has nothing more to do right now.
    void pump() {
        TimerFd stop(std::chrono::milliseconds(30), TimerFd::Repeat::once);
        loop_.watch(stop.fd(), [this]() { loop_.stop(); });
        loop_.run();
        loop_.unwatch(stop.fd());
    }

    static void send_line(int fd, const std::string& line) {
        ASSERT_EQ(::send(fd, line.data(), line.size(), MSG_NOSIGNAL), static_cast<ssize_t>(line.size()));
    }

    // Everything readable now, without blocking.
    static std::string drain(int fd) {
        std::string out;
        char buf[65536];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) out.append(buf, static_cast<std::size_t>(n));
        return out;
    }

    std::filesystem::path dir_, path_;
    EventLoop loop_;
    StubHandler handler_;
    ServerLimits limits_{.max_clients = 8, .max_unsent_bytes = 1u << 20, .max_follower_lag_bytes = 64u << 10};
    std::optional<QueryServer> server_;
};

proto::Request printk_follow(std::uint64_t id) {
    proto::Request r;
    r.id = id;
    r.op = proto::Op::printk;
    r.printk.follow = true;
    return r;
}

TEST_F(QueryServerTest, ASubscriberGetsEveryPublishedBatchWithItsId) {
    UniqueFd client = connect_client();
    send_line(client.get(), proto::encode_request(printk_follow(7)));
    pump();
    EXPECT_EQ(server_->subscribers(), 1u);
    for (int i = 0; i < 3; ++i) {
        server_->publish([i](const proto::Request& r) -> std::optional<nlohmann::json> {
            EXPECT_EQ(r.id, 7u);
            return nlohmann::json{{"batch", i}};
        });
    }
    pump();
    const std::string out = drain(client.get());
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 4) << out;  // the backlog reply + 3 batches
    EXPECT_NE(out.find(R"("id":7,"ok":true,"result":{"batch":2})"), std::string::npos) << out;
}

TEST_F(QueryServerTest, AQueryThatThrowsIsThatClientsInternalErrorAndTheServerGoesOn) {
    UniqueFd client = connect_client();
    proto::Request r;
    r.id = 3;
    r.op = proto::Op::report;
    send_line(client.get(), proto::encode_request(r));
    r.id = 4;
    r.op = proto::Op::snapshot;
    send_line(client.get(), proto::encode_request(r));
    r.id = 5;
    r.op = proto::Op::version;
    send_line(client.get(), proto::encode_request(r));
    pump();
    const std::string out = drain(client.get());
    EXPECT_NE(out.find(R"("id":3,"ok":false,"error":{"code":"internal","message":"out of memory while answering report"})"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find(R"("id":4,"ok":false,"error":{"code":"internal","message":"snapshot failed: the disk caught fire"})"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find(R"("id":5,"ok":true,"result":{"op":"version"})"), std::string::npos) << out;
}

TEST_F(QueryServerTest, AFollowerThatStopsReadingIsDroppedWithLaggedAndOthersAreServed) {
    UniqueFd slow = connect_client(4096);
    send_line(slow.get(), proto::encode_request(printk_follow(9)));
    pump();
    ASSERT_EQ(server_->subscribers(), 1u);
    const std::string big(8192, 'x');
    for (int i = 0; i < 200 && server_->subscribers() > 0; ++i) {
        server_->publish([&](const proto::Request&) -> std::optional<nlohmann::json> {
            return nlohmann::json{{"text", big}};
        });
        pump();
    }
    EXPECT_EQ(server_->subscribers(), 0u);
    EXPECT_EQ(server_->counters().followers_lagged, 1u)
        << "dropped_slow " << server_->counters().dropped_slow << ", clients " << server_->clients();

    // Reading what is left ends with the lagged error on a line of its own.
    std::string all;
    for (int i = 0; i < 100; ++i) {
        pump();
        const std::string chunk = drain(slow.get());
        all += chunk;
        if (all.find("\"lagged\"") != std::string::npos) break;
    }
    const auto last_line_start = all.rfind('\n', all.size() - 2) + 1;
    EXPECT_NE(all.find(R"("code":"lagged")", last_line_start), std::string::npos) << all.substr(last_line_start);

    // Another client is answered as usual.
    UniqueFd other = connect_client();
    proto::Request version;
    version.id = 3;
    send_line(other.get(), proto::encode_request(version));
    pump();
    EXPECT_NE(drain(other.get()).find(R"("id":3,"ok":true)"), std::string::npos);
}

TEST_F(QueryServerTest, ManyRequestsFromAClientThatDoesNotReadAreAnsweredAsItReads) {
    UniqueFd client = connect_client(4096);
    proto::Request version;
    std::string burst;
    for (std::uint64_t id = 1; id <= 2000; ++id) {
        version.id = id;
        burst += proto::encode_request(version);
    }
    std::thread writer([&] { send_line(client.get(), burst); });
    std::size_t replies = 0;
    std::string out;
    for (int i = 0; i < 2000 && replies < 2000; ++i) {
        pump();
        out += drain(client.get());
        replies = static_cast<std::size_t>(std::count(out.begin(), out.end(), '\n'));
    }
    writer.join();
    EXPECT_EQ(replies, 2000u);
    EXPECT_NE(out.find(R"("id":2000,"ok":true)"), std::string::npos);
    EXPECT_EQ(server_->counters().dropped_slow, 0u);
}

}  // namespace
}  // namespace kleak::service
