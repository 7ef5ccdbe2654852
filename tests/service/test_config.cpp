// The daemon's config file: defaults, every validation rule with the key path
// it reports, error collection and formatting, and the "config in force"
// round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"

#ifndef KLEAK_FIXTURES_DIR
#error "KLEAK_FIXTURES_DIR must name tests/fixtures (set by tests/service/CMakeLists.txt)"
#endif
#ifndef KLEAK_SHIPPED_CONFIG
#error "KLEAK_SHIPPED_CONFIG must name config/kleakd.conf (set by tests/service/CMakeLists.txt)"
#endif

namespace kleak::config {

// gtest prints values it compares; the config in force is the readable form.
void PrintTo(const Settings& settings, std::ostream* os) { *os << settings_to_json(settings).dump(); }
void PrintTo(const ConfigError& error, std::ostream* os) { *os << '{' << error.key << ": " << error.message << '}'; }

namespace {

const std::filesystem::path kConfigFixtures = std::filesystem::path(KLEAK_FIXTURES_DIR) / "config";

std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in) << "cannot open " << path;
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::vector<std::string> keys_of(const std::vector<ConfigError>& errors) {
    std::vector<std::string> keys;
    for (const ConfigError& error : errors) keys.push_back(error.key);
    std::sort(keys.begin(), keys.end());
    return keys;
}

Settings parse_valid(const std::string& text) {
    const ConfigResult result = parse_config(text);
    EXPECT_TRUE(result.errors.empty()) << format_errors("<text>", result.errors);
    return result.settings.value_or(Settings{});
}

// --- defaults -----------------------------------------------------------------------

TEST(Config, ShippedFileParsesToExactlyTheDefaults) {
    const ConfigResult result = load_config(KLEAK_SHIPPED_CONFIG);
    ASSERT_TRUE(result.errors.empty()) << format_errors(KLEAK_SHIPPED_CONFIG, result.errors);
    ASSERT_TRUE(result.settings.has_value());
    EXPECT_EQ(*result.settings, Settings{});
}

// Every key path of `document`, sections included: "printk", "printk.file",
// "printk.file.max_size", ...
void collect_key_paths(const nlohmann::json& document, const std::string& parent, std::vector<std::string>& paths) {
    for (const auto& [key, value] : document.items()) {
        const std::string path = parent.empty() ? key : parent + "." + key;
        paths.push_back(path);
        if (value.is_object()) collect_key_paths(value, path, paths);
    }
}

TEST(Config, ShippedFileSpellsOutEveryKey) {
    // Documentation, not just defaults: each key the daemon knows appears in
    // the shipped file, so an admin can see what is tunable. Checked by
    // parsing the file rather than searching its text, so a key named only
    // in a comment, or under the wrong section, does not count.
    const ConfigResult parsed = load_config(KLEAK_SHIPPED_CONFIG);
    ASSERT_TRUE(parsed.errors.empty()) << format_errors(KLEAK_SHIPPED_CONFIG, parsed.errors);
    const nlohmann::json shipped =
        nlohmann::json::parse(read_text(KLEAK_SHIPPED_CONFIG), nullptr, /*allow_exceptions=*/true,
                              /*ignore_comments=*/true);
    std::vector<std::string> expected, present;
    collect_key_paths(settings_to_json(Settings{}), "", expected);
    collect_key_paths(shipped, "", present);
    std::sort(expected.begin(), expected.end());
    std::sort(present.begin(), present.end());
    EXPECT_EQ(present, expected);
    EXPECT_NE(std::find(expected.begin(), expected.end(), "printk.file.max_size"), expected.end());
}

TEST(Config, DefaultsAreTheDocumentedValues) {
    const Settings defaults;
    EXPECT_EQ(defaults.socket.path, "/run/kleakd/kleakd.sock");
    EXPECT_EQ(defaults.socket.group, "kleakd");
    EXPECT_EQ(defaults.socket.mode, 0660u);
    EXPECT_EQ(defaults.socket.admin_group, "");
    EXPECT_EQ(defaults.socket.max_clients, 64u);
    EXPECT_EQ(defaults.socket.idle_timeout, std::chrono::seconds(60));
    EXPECT_EQ(defaults.socket.max_unread, std::uint64_t{64} << 20);
    EXPECT_EQ(defaults.snapshots.directory, "/var/lib/kleakd/snapshots");
    EXPECT_EQ(defaults.snapshots.interval, std::chrono::seconds{60});
    EXPECT_EQ(defaults.snapshots.retention, 60u);
    EXPECT_EQ(defaults.snapshots.checkpoint_interval, std::chrono::seconds{60});
    EXPECT_EQ(defaults.tracing.buffer_size, 8u << 20);
    EXPECT_TRUE(defaults.tracing.kmalloc);
    EXPECT_TRUE(defaults.tracing.kmem_cache);
    EXPECT_EQ(defaults.log_level, "info");
    EXPECT_TRUE(defaults.printk.enabled);
    EXPECT_EQ(defaults.printk.lines, 10000u);
    EXPECT_FALSE(defaults.printk.file_enabled);
    EXPECT_EQ(defaults.printk.file_directory, "/var/lib/kleakd/printk");
    EXPECT_EQ(defaults.printk.file_max_size, 16u << 20);
    EXPECT_EQ(defaults.printk.file_retention, 5u);
}

TEST(Config, EmptyObjectAndEmptySectionsGiveDefaults) {
    EXPECT_EQ(parse_valid("{}"), Settings{});
    EXPECT_EQ(parse_valid(R"({"socket": {}, "snapshots": {}, "tracing": {}, "printk": {}})"), Settings{});
    EXPECT_EQ(parse_valid(R"({"printk": {"file": {}}})"), Settings{});
}

TEST(Config, AcceptsCommentsOfBothKinds) {
    EXPECT_EQ(parse_valid("// leading\n{ /* inline */ \"log_level\": \"debug\" // trailing\n}").log_level, "debug");
}

// --- accepted values ----------------------------------------------------------------

TEST(Config, EveryKeySetToANonDefaultValue) {
    const Settings settings = parse_valid(R"({
        "socket": {"path": "/run/leaks.sock", "group": "_leak-watchers9", "mode": "600", "admin_group": "wheel",
                   "max_clients": 8, "idle_timeout": "2m", "max_unread": "1M"},
        "snapshots": {"directory": "/srv/leaks", "interval": "5m", "retention": 7},
        "tracing": {"buffer_size": "64K", "allocators": ["kmem_cache"]},
        "printk": {"enabled": false, "lines": 500,
                   "file": {"enabled": true, "directory": "/srv/kmsg", "max_size": "1M", "retention": 3}},
        "log_level": "warn"
    })");
    Settings expected;
    expected.socket = {"/run/leaks.sock", "_leak-watchers9", 0600, "wheel", 8, std::chrono::minutes{2}, 1 << 20};
    expected.snapshots = {"/srv/leaks", std::chrono::minutes{5}, 7};
    expected.tracing = {64 << 10, /*kmalloc=*/false, /*kmem_cache=*/true, /*page=*/false, /*percpu=*/false,
                        /*vmalloc=*/false};
    expected.printk = {/*enabled=*/false, /*lines=*/500, /*file_enabled=*/true, "/srv/kmsg", 1 << 20, 3};
    expected.log_level = "warn";
    EXPECT_EQ(settings, expected);
}

struct Accepted {
    const char* name;
    std::string text;
    Settings expected;
};

void PrintTo(const Accepted& a, std::ostream* os) { *os << a.name; }

Settings with(auto change) {
    Settings settings;
    change(settings);
    return settings;
}

class ConfigAccepts : public ::testing::TestWithParam<Accepted> {};

TEST_P(ConfigAccepts, Value) { EXPECT_EQ(parse_valid(GetParam().text), GetParam().expected); }

using std::chrono::seconds;

INSTANTIATE_TEST_SUITE_P(
    Boundaries, ConfigAccepts,
    ::testing::Values(
        Accepted{"interval_1s", R"({"snapshots": {"interval": "1s"}})",
                 with([](Settings& s) { s.snapshots.interval = seconds{1}; })},
        Accepted{"interval_24h", R"({"snapshots": {"interval": "24h"}})",
                 with([](Settings& s) { s.snapshots.interval = seconds{86400}; })},
        Accepted{"interval_1440m", R"({"snapshots": {"interval": "1440m"}})",
                 with([](Settings& s) { s.snapshots.interval = seconds{86400}; })},
        Accepted{"interval_integer", R"({"snapshots": {"interval": 90}})",
                 with([](Settings& s) { s.snapshots.interval = seconds{90}; })},
        Accepted{"interval_bare_string", R"({"snapshots": {"interval": "90"}})",
                 with([](Settings& s) { s.snapshots.interval = seconds{90}; })},
        Accepted{"retention_1", R"({"snapshots": {"retention": 1}})",
                 with([](Settings& s) { s.snapshots.retention = 1; })},
        Accepted{"retention_10000", R"({"snapshots": {"retention": 10000}})",
                 with([](Settings& s) { s.snapshots.retention = 10000; })},
        Accepted{"mode_0600", R"({"socket": {"mode": "0600"}})", with([](Settings& s) { s.socket.mode = 0600; })},
        Accepted{"mode_0777_minus_world_write", R"({"socket": {"mode": "0775"}})",
                 with([](Settings& s) { s.socket.mode = 0775; })},
        Accepted{"mode_0664", R"({"socket": {"mode": "0664"}})", with([](Settings& s) { s.socket.mode = 0664; })},
        Accepted{"admin_group", R"({"socket": {"admin_group": "kleakd-admin"}})",
                 with([](Settings& s) { s.socket.admin_group = "kleakd-admin"; })},
        Accepted{"admin_group_none", R"({"socket": {"admin_group": ""}})", with([](Settings&) {})},
        Accepted{"max_clients_2", R"({"socket": {"max_clients": 2}})",
                 with([](Settings& s) { s.socket.max_clients = 2; })},
        Accepted{"idle_timeout_5m", R"({"socket": {"idle_timeout": "5m"}})",
                 with([](Settings& s) { s.socket.idle_timeout = std::chrono::minutes(5); })},
        Accepted{"idle_timeout_seconds", R"({"socket": {"idle_timeout": 10}})",
                 with([](Settings& s) { s.socket.idle_timeout = std::chrono::seconds(10); })},
        Accepted{"max_unread_256k", R"({"socket": {"max_unread": "256K"}})",
                 with([](Settings& s) { s.socket.max_unread = 256u << 10; })},
        Accepted{"group_32_chars", R"({"socket": {"group": "abcdefghijklmnopqrstuvwxyz012345"}})",
                 with([](Settings& s) { s.socket.group = "abcdefghijklmnopqrstuvwxyz012345"; })},
        Accepted{"socket_path_107_bytes", R"({"socket": {"path": "/)" + std::string(106, 's') + R"("}})",
                 with([](Settings& s) { s.socket.path = "/" + std::string(106, 's'); })},
        Accepted{"buffer_size_1G", R"({"tracing": {"buffer_size": "1G"}})",
                 with([](Settings& s) { s.tracing.buffer_size = 1u << 30; })},
        Accepted{"only_kmalloc", R"({"tracing": {"allocators": ["kmalloc"]}})",
                 with([](Settings& s) { s.tracing.kmem_cache = s.tracing.percpu = s.tracing.vmalloc = false; })},
        Accepted{"allocators_any_order",
                 R"({"tracing": {"allocators": ["vmalloc", "kmem_cache", "percpu", "kmalloc"]}})", Settings{}},
        Accepted{"every_family", R"({"tracing": {"allocators": ["kmalloc", "kmem_cache", "page", "percpu", "vmalloc"]}})",
                 with([](Settings& s) { s.tracing.page = true; })},
        Accepted{"only_pages", R"({"tracing": {"allocators": ["page"]}})", with([](Settings& s) {
                     s.tracing.kmalloc = s.tracing.kmem_cache = s.tracing.percpu = s.tracing.vmalloc = false;
                     s.tracing.page = true;
                 })},
        Accepted{"attach_raw_tp", R"({"tracing": {"attach": "raw_tp"}})",
                 with([](Settings& s) { s.tracing.attach = "raw_tp"; })},
        Accepted{"attach_tp_btf", R"({"tracing": {"attach": "tp_btf"}})",
                 with([](Settings& s) { s.tracing.attach = "tp_btf"; })},
        Accepted{"attach_auto", R"({"tracing": {"attach": "auto"}})", Settings{}},
        Accepted{"stack_sample_shift_0", R"({"tracing": {"stacks": "all", "stack_sample_shift": 0}})",
                 with([](Settings& s) {
                     s.tracing.stacks = "all";
                     s.tracing.stack_sample_shift = 0;
                 })},
        Accepted{"stack_sample_shift_32", R"({"tracing": {"stack_sample_shift": 32}})",
                 with([](Settings& s) { s.tracing.stack_sample_shift = 32; })},
        Accepted{"verdicts_fast", R"({"verdicts": {"interval": "1s", "window": "60s", "recent": "5s", "min_rise": 2}})",
                 with([](Settings& s) { s.verdicts = {std::chrono::seconds{1}, std::chrono::seconds{60},
                                                      std::chrono::seconds{5}, 2}; })},
        // Left out, window and recent follow the interval.
        Accepted{"verdicts_interval_only_short", R"({"verdicts": {"interval": "5s"}})",
                 with([](Settings& s) { s.verdicts = {std::chrono::seconds{5}, std::chrono::seconds{450},
                                                      std::chrono::seconds{60}, 4}; })},
        Accepted{"verdicts_interval_only_long", R"({"verdicts": {"interval": "10m"}})",
                 with([](Settings& s) { s.verdicts = {std::chrono::seconds{600}, std::chrono::seconds{3600},
                                                      std::chrono::seconds{1200}, 4}; })},
        Accepted{"verdicts_interval_one_second", R"({"verdicts": {"interval": 1}})",
                 with([](Settings& s) { s.verdicts = {std::chrono::seconds{1}, std::chrono::seconds{90},
                                                      std::chrono::seconds{60}, 4}; })},
        Accepted{"log_level_off", R"({"log_level": "off"})", with([](Settings& s) { s.log_level = "off"; })},
        Accepted{"printk_disabled", R"({"printk": {"enabled": false}})",
                 with([](Settings& s) { s.printk.enabled = false; })},
        Accepted{"printk_lines_1", R"({"printk": {"lines": 1}})", with([](Settings& s) { s.printk.lines = 1; })},
        Accepted{"printk_lines_1000000", R"({"printk": {"lines": 1000000}})",
                 with([](Settings& s) { s.printk.lines = 1000000; })},
        Accepted{"printk_file_enabled", R"({"printk": {"file": {"enabled": true}}})",
                 with([](Settings& s) { s.printk.file_enabled = true; })},
        Accepted{"printk_file_directory", R"({"printk": {"file": {"directory": "/var/log/kleakd"}}})",
                 with([](Settings& s) { s.printk.file_directory = "/var/log/kleakd"; })},
        Accepted{"printk_max_size_64K", R"({"printk": {"file": {"max_size": "64K"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 64 << 10; })},
        Accepted{"printk_max_size_65536_bytes", R"({"printk": {"file": {"max_size": "65536"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 65536; })},
        Accepted{"printk_max_size_1G", R"({"printk": {"file": {"max_size": "1G"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 1u << 30; })},
        Accepted{"printk_max_size_1024M", R"({"printk": {"file": {"max_size": "1024m"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 1u << 30; })},
        // Unlike a ring buffer, a file size need not be a power of two.
        Accepted{"printk_max_size_3M", R"({"printk": {"file": {"max_size": "3M"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 3u << 20; })},
        Accepted{"printk_max_size_100000", R"({"printk": {"file": {"max_size": "100000"}}})",
                 with([](Settings& s) { s.printk.file_max_size = 100000; })},
        Accepted{"printk_retention_1", R"({"printk": {"file": {"retention": 1}}})",
                 with([](Settings& s) { s.printk.file_retention = 1; })},
        Accepted{"printk_retention_1000", R"({"printk": {"file": {"retention": 1000}}})",
                 with([](Settings& s) { s.printk.file_retention = 1000; })}),
    [](const auto& test) { return std::string(test.param.name); });

// --- one invalid value, one error at its key ------------------------------------------

struct Rejected {
    const char* name;
    std::string text;
    const char* key;
    const char* phrase;  // the message must contain it
};

void PrintTo(const Rejected& r, std::ostream* os) { *os << r.name; }

class ConfigRejects : public ::testing::TestWithParam<Rejected> {};

TEST_P(ConfigRejects, WithOneErrorAtTheKey) {
    const ConfigResult result = parse_config(GetParam().text);
    EXPECT_FALSE(result.settings.has_value());
    ASSERT_EQ(result.errors.size(), 1u) << format_errors("<text>", result.errors);
    EXPECT_EQ(result.errors[0].key, GetParam().key);
    EXPECT_NE(result.errors[0].message.find(GetParam().phrase), std::string::npos) << result.errors[0].message;
}

const std::string kLongSocketPath = "/" + std::string(107, 's');  // 108 bytes: no room for the NUL

INSTANTIATE_TEST_SUITE_P(
    Values, ConfigRejects,
    ::testing::Values(
        // the file as a whole
        Rejected{"syntax", "{\"log_level\": }", "", "invalid JSON: parse error at line 1"},
        Rejected{"top_level_array", "[]", "", "must be a JSON object at the top level"},
        Rejected{"top_level_null", "null", "", "is null; must be a JSON object at the top level"},
        Rejected{"duplicate_key", R"({"log_level": "info", "log_level": "debug"})", "log_level", "duplicate key"},
        Rejected{"duplicate_nested_key", R"({"socket": {"mode": "0600", "mode": "0660"}})", "socket.mode",
                 "duplicate key"},
        // sections
        Rejected{"section_not_object", R"({"socket": "/run/kleakd.sock"})", "socket",
                 "is a string; must be a JSON object"},
        Rejected{"section_array", R"({"tracing": []})", "tracing", "is an array; must be a JSON object"},
        // socket.path
        Rejected{"socket_path_relative", R"({"socket": {"path": "run/kleakd.sock"}})", "socket.path",
                 "is not absolute"},
        Rejected{"socket_path_empty", R"({"socket": {"path": ""}})", "socket.path", "is not absolute"},
        Rejected{"socket_path_root", R"({"socket": {"path": "/"}})", "socket.path", "names a directory"},
        Rejected{"socket_path_trailing_slash", R"({"socket": {"path": "/run/kleakd/"}})", "socket.path",
                 "names a directory"},
        Rejected{"socket_path_too_long", R"({"socket": {"path": ")" + kLongSocketPath + R"("}})", "socket.path",
                 "at most 107"},
        Rejected{"socket_path_type", R"({"socket": {"path": 5}})", "socket.path",
                 "is an integer; must be an absolute file path, e.g. \"/run/kleakd/kleakd.sock\""},
        // socket.group
        Rejected{"group_empty", R"({"socket": {"group": ""}})", "socket.group", "matching [a-z_][a-z0-9_-]*"},
        Rejected{"group_uppercase", R"({"socket": {"group": "Kleakd"}})", "socket.group", "not a valid group name"},
        Rejected{"group_leading_digit", R"({"socket": {"group": "1kleakd"}})", "socket.group", "not a valid"},
        Rejected{"group_space", R"({"socket": {"group": "kle akd"}})", "socket.group", "not a valid"},
        Rejected{"group_33_chars", R"({"socket": {"group": "abcdefghijklmnopqrstuvwxyz0123456"}})", "socket.group",
                 "at most 32 characters"},
        Rejected{"group_type", R"({"socket": {"group": true}})", "socket.group", "is a boolean"},
        // socket.admin_group, max_clients, idle_timeout, max_unread
        Rejected{"admin_group_invalid", R"({"socket": {"admin_group": "Root"}})", "socket.admin_group",
                 "'Root' is not a valid group name; must be \"\" (root only) or a group name"},
        Rejected{"admin_group_type", R"({"socket": {"admin_group": 0}})", "socket.admin_group", "is an integer"},
        Rejected{"max_clients_1", R"({"socket": {"max_clients": 1}})", "socket.max_clients",
                 "1 is out of range; must be an integer from 2 to 4096"},
        Rejected{"max_clients_huge", R"({"socket": {"max_clients": 100000}})", "socket.max_clients", "out of range"},
        Rejected{"idle_timeout_zero", R"({"socket": {"idle_timeout": "0s"}})", "socket.idle_timeout",
                 "out of range; must be a duration from 1s to 24h"},
        Rejected{"idle_timeout_word", R"({"socket": {"idle_timeout": "never"}})", "socket.idle_timeout",
                 "is not a duration"},
        Rejected{"max_unread_small", R"({"socket": {"max_unread": "4K"}})", "socket.max_unread", "256K"},
        Rejected{"max_unread_type", R"({"socket": {"max_unread": 1048576}})", "socket.max_unread",
                 "is an integer; must be a size string"},
        // socket.mode
        Rejected{"mode_number", R"({"socket": {"mode": 660}})", "socket.mode",
                 "is an integer; must be an octal string"},
        Rejected{"mode_not_octal", R"({"socket": {"mode": "0680"}})", "socket.mode", "is not an octal mode"},
        Rejected{"mode_prefixed", R"({"socket": {"mode": "0o660"}})", "socket.mode", "is not an octal mode"},
        Rejected{"mode_empty", R"({"socket": {"mode": ""}})", "socket.mode", "is not an octal mode"},
        Rejected{"mode_five_digits", R"({"socket": {"mode": "00660"}})", "socket.mode", "is not an octal mode"},
        Rejected{"mode_sticky", R"({"socket": {"mode": "1770"}})", "socket.mode", "beyond 0777"},
        Rejected{"mode_owner_read_only", R"({"socket": {"mode": "0460"}})", "socket.mode",
                 "does not let the daemon's own user read and write"},
        Rejected{"mode_owner_nothing", R"({"socket": {"mode": "0060"}})", "socket.mode", "read and write"},
        Rejected{"mode_world_writable", R"({"socket": {"mode": "0666"}})", "socket.mode",
                 "lets every user on the host control the daemon"},
        Rejected{"mode_0777", R"({"socket": {"mode": "0777"}})", "socket.mode", "every user"},
        // snapshots.directory
        Rejected{"directory_relative", R"({"snapshots": {"directory": "snapshots"}})", "snapshots.directory",
                 "'snapshots' is not absolute; must be an absolute directory path"},
        Rejected{"directory_type", R"({"snapshots": {"directory": ["/a"]}})", "snapshots.directory", "is an array"},
        // snapshots.interval
        Rejected{"interval_zero", R"({"snapshots": {"interval": "0s"}})", "snapshots.interval",
                 "'0s' is out of range; must be a duration from 1s to 24h"},
        Rejected{"interval_over_a_day", R"({"snapshots": {"interval": "25h"}})", "snapshots.interval", "out of range"},
        Rejected{"interval_integer_over_a_day", R"({"snapshots": {"interval": 86401}})", "snapshots.interval",
                 "86401 is out of range"},
        Rejected{"interval_integer_zero", R"({"snapshots": {"interval": 0}})", "snapshots.interval", "out of range"},
        Rejected{"interval_negative", R"({"snapshots": {"interval": -5}})", "snapshots.interval", "out of range"},
        Rejected{"interval_huge", R"({"snapshots": {"interval": "99999999999999999999h"}})", "snapshots.interval",
                 "out of range"},
        Rejected{"interval_unknown_unit", R"({"snapshots": {"interval": "5d"}})", "snapshots.interval",
                 "'5d' is not a duration"},
        Rejected{"interval_fraction", R"({"snapshots": {"interval": "1.5m"}})", "snapshots.interval", "not a duration"},
        Rejected{"interval_spaced", R"({"snapshots": {"interval": "5 m"}})", "snapshots.interval", "not a duration"},
        Rejected{"interval_empty", R"({"snapshots": {"interval": ""}})", "snapshots.interval", "not a duration"},
        Rejected{"interval_float", R"({"snapshots": {"interval": 1.5}})", "snapshots.interval",
                 "is a fractional number"},
        // snapshots.retention
        Rejected{"retention_zero", R"({"snapshots": {"retention": 0}})", "snapshots.retention",
                 "0 is out of range; must be an integer from 1 to 10000"},
        Rejected{"retention_too_many", R"({"snapshots": {"retention": 10001}})", "snapshots.retention", "out of range"},
        Rejected{"retention_negative", R"({"snapshots": {"retention": -1}})", "snapshots.retention", "out of range"},
        Rejected{"retention_beyond_int64", R"({"snapshots": {"retention": 18446744073709551615}})",
                 "snapshots.retention", "out of range"},
        Rejected{"retention_string", R"({"snapshots": {"retention": "60"}})", "snapshots.retention",
                 "is a string; must be an integer from 1 to 10000"},
        Rejected{"retention_fraction", R"({"snapshots": {"retention": 2.5}})", "snapshots.retention",
                 "is a fractional number"},
        // tracing.buffer_size: the size parser's own words
        Rejected{"buffer_size_not_power_of_two", R"({"tracing": {"buffer_size": "3M"}})", "tracing.buffer_size",
                 "'3M' is not a power of two (BPF ring buffers must be)"},
        Rejected{"buffer_size_too_large", R"({"tracing": {"buffer_size": "2G"}})", "tracing.buffer_size", "too large"},
        Rejected{"buffer_size_number", R"({"tracing": {"buffer_size": 8388608}})", "tracing.buffer_size",
                 "is an integer; must be a size string"},
        // tracing.allocators
        Rejected{"allocators_empty", R"({"tracing": {"allocators": []}})", "tracing.allocators",
                 "no allocator is listed"},
        Rejected{"allocators_not_array", R"({"tracing": {"allocators": "kmalloc"}})", "tracing.allocators",
                 "is a string; must be a non-empty array"},
        Rejected{"allocator_unknown", R"({"tracing": {"allocators": ["kmalloc", "slab"]}})", "tracing.allocators[1]",
                 "'slab' is not an allocator; must be one of \"kmalloc\", \"kmem_cache\""},
        Rejected{"allocator_misspelt", R"({"tracing": {"allocators": ["kmaloc"]}})", "tracing.allocators[0]",
                 "must be one of \"kmalloc\", \"kmem_cache\", \"page\", \"percpu\", \"vmalloc\"; did you mean \"kmalloc\"?"},
        Rejected{"allocator_twice", R"({"tracing": {"allocators": ["kmalloc", "kmem_cache", "kmalloc"]}})",
                 "tracing.allocators[2]", "'kmalloc' is listed twice"},
        Rejected{"allocator_type", R"({"tracing": {"allocators": ["kmalloc", {"name": "kmem_cache"}]}})",
                 "tracing.allocators[1]", "is an object; must be one of"},
        Rejected{"verdicts_window_past_the_samples", R"({"verdicts": {"interval": "10s", "window": "30m"}})",
                 "verdicts.window", "a window of 1800s is more than the 90 intervals kept at full resolution (900s at "
                                    "an interval of 10s)"},
        Rejected{"verdicts_recent_under_two_intervals", R"({"verdicts": {"interval": "10s", "recent": "15s"}})",
                 "verdicts.recent", "recent (15s) must be at least two intervals (20s) and less than the window (900s)"},
        Rejected{"verdicts_recent_past_the_window", R"({"verdicts": {"window": "60s", "recent": "60s"}})",
                 "verdicts.recent", "less than the window"},
        Rejected{"verdicts_window_under_the_default_recent", R"({"verdicts": {"window": "50s"}})", "verdicts.window",
                 "recent (60s) must be at least two intervals (20s) and less than the window (50s)"},
        Rejected{"verdicts_interval_too_long", R"({"verdicts": {"interval": "11m"}})", "verdicts.interval",
                 "660s is out of range; must be a duration from 1s to 10m"},
        Rejected{"verdicts_bad_value_is_the_only_error", R"({"verdicts": {"interval": "fast", "window": "1h"}})",
                 "verdicts.interval", "'fast' is not a duration"},
        Rejected{"verdicts_min_rise_zero", R"({"verdicts": {"min_rise": 0}})", "verdicts.min_rise",
                 "0 is out of range; must be an integer from 1 to 1000000"},
        Rejected{"verdicts_unknown_key", R"({"verdicts": {"windows": "60s"}})", "verdicts.windows",
                 "did you mean \"window\"?"},
        Rejected{"attach_unknown", R"({"tracing": {"attach": "fentry"}})", "tracing.attach",
                 "'fentry' is not an attach mode; must be one of \"auto\", \"tp_btf\", \"raw_tp\""},
        Rejected{"attach_typo", R"({"tracing": {"attach": "raw-tp"}})", "tracing.attach", "did you mean \"raw_tp\"?"},
        Rejected{"attach_type", R"({"tracing": {"attach": true}})", "tracing.attach", "is a boolean"},
        Rejected{"stack_sample_shift_range", R"({"tracing": {"stack_sample_shift": 33}})", "tracing.stack_sample_shift",
                 "33 is out of range; must be an integer from 0 to 32"},
        Rejected{"stack_sample_shift_type", R"({"tracing": {"stack_sample_shift": "3"}})", "tracing.stack_sample_shift",
                 "is a string"},
        // log_level
        Rejected{"log_level_unknown", R"({"log_level": "verbose"})", "log_level",
                 "'verbose' is not a log level; must be one of trace, debug, info, warn, error, critical, off"},
        Rejected{"log_level_long_name", R"({"log_level": "warning"})", "log_level", "did you mean \"warn\"?"},
        Rejected{"log_level_typo", R"({"log_level": "debgu"})", "log_level", "did you mean \"debug\"?"},
        Rejected{"log_level_type", R"({"log_level": 3})", "log_level", "is an integer"},
        // unknown keys
        Rejected{"unknown_section_close", R"({"snapshot": {"retention": 5}})", "snapshot",
                 "unknown key; did you mean \"snapshots\"?"},
        Rejected{"unknown_key_close", R"({"socket": {"pth": "/run/k.sock"}})", "socket.pth", "did you mean \"path\"?"},
        Rejected{"unknown_key_hyphen", R"({"tracing": {"buffer-size": "8M"}})", "tracing.buffer-size",
                 "did you mean \"buffer_size\"?"},
        // printk
        Rejected{"printk_not_object", R"({"printk": true})", "printk", "is a boolean; must be a JSON object"},
        Rejected{"printk_file_not_object", R"({"printk": {"file": "/var/log/printk.log"}})", "printk.file",
                 "is a string; must be a JSON object"},
        Rejected{"printk_enabled_string", R"({"printk": {"enabled": "yes"}})", "printk.enabled",
                 "is a string; must be true or false"},
        Rejected{"printk_enabled_integer", R"({"printk": {"enabled": 1}})", "printk.enabled",
                 "is an integer; must be true or false"},
        Rejected{"printk_lines_zero", R"({"printk": {"lines": 0}})", "printk.lines",
                 "0 is out of range; must be an integer from 1 to 1000000"},
        Rejected{"printk_lines_too_many", R"({"printk": {"lines": 1000001}})", "printk.lines",
                 "1000001 is out of range"},
        Rejected{"printk_lines_negative", R"({"printk": {"lines": -1}})", "printk.lines", "out of range"},
        Rejected{"printk_lines_beyond_int64", R"({"printk": {"lines": 18446744073709551615}})", "printk.lines",
                 "out of range"},
        Rejected{"printk_lines_string", R"({"printk": {"lines": "10000"}})", "printk.lines",
                 "is a string; must be an integer from 1 to 1000000"},
        Rejected{"printk_lines_fraction", R"({"printk": {"lines": 1.5}})", "printk.lines", "is a fractional number"},
        Rejected{"printk_file_enabled_null", R"({"printk": {"file": {"enabled": null}}})", "printk.file.enabled",
                 "is null; must be true or false"},
        Rejected{"printk_directory_relative", R"({"printk": {"file": {"directory": "printk"}}})",
                 "printk.file.directory",
                 "'printk' is not absolute; must be an absolute directory path, e.g. \"/var/lib/kleakd/printk\""},
        Rejected{"printk_directory_empty", R"({"printk": {"file": {"directory": ""}}})", "printk.file.directory",
                 "is not absolute"},
        Rejected{"printk_directory_type", R"({"printk": {"file": {"directory": false}}})", "printk.file.directory",
                 "is a boolean"},
        Rejected{"printk_max_size_below_64K", R"({"printk": {"file": {"max_size": "65535"}}})",
                 "printk.file.max_size",
                 "'65535' is too small; use a size from 64K to 1G: a number of bytes with an optional K, M or G "
                 "suffix, e.g. 16M"},
        Rejected{"printk_max_size_63K", R"({"printk": {"file": {"max_size": "63K"}}})", "printk.file.max_size",
                 "too small"},
        Rejected{"printk_max_size_zero", R"({"printk": {"file": {"max_size": "0"}}})", "printk.file.max_size",
                 "too small"},
        Rejected{"printk_max_size_above_1G", R"({"printk": {"file": {"max_size": "1025M"}}})",
                 "printk.file.max_size", "'1025M' is too large"},
        Rejected{"printk_max_size_huge", R"({"printk": {"file": {"max_size": "99999999999999999G"}}})",
                 "printk.file.max_size", "too large"},
        Rejected{"printk_max_size_unit", R"({"printk": {"file": {"max_size": "16X"}}})", "printk.file.max_size",
                 "'16X' has an unknown unit"},
        Rejected{"printk_max_size_empty", R"({"printk": {"file": {"max_size": ""}}})", "printk.file.max_size",
                 "'' is not a size"},
        Rejected{"printk_max_size_integer", R"({"printk": {"file": {"max_size": 16777216}}})",
                 "printk.file.max_size", "is an integer; must be a size string from 64K to 1G, e.g. \"16M\""},
        Rejected{"printk_retention_zero", R"({"printk": {"file": {"retention": 0}}})", "printk.file.retention",
                 "0 is out of range; must be an integer from 1 to 1000"},
        Rejected{"printk_retention_too_many", R"({"printk": {"file": {"retention": 1001}}})",
                 "printk.file.retention", "1001 is out of range"},
        Rejected{"printk_retention_string", R"({"printk": {"file": {"retention": "5"}}})", "printk.file.retention",
                 "is a string; must be an integer from 1 to 1000"},
        Rejected{"printk_unknown_key_close", R"({"printk": {"line": 5}})", "printk.line",
                 "unknown key; did you mean \"lines\"?"},
        Rejected{"printk_file_unknown_key_close", R"({"printk": {"file": {"max-size": "1M"}}})",
                 "printk.file.max-size", "did you mean \"max_size\"?"},
        Rejected{"printk_file_unknown_key_far", R"({"printk": {"file": {"compress": true}}})",
                 "printk.file.compress", "valid keys here: enabled, directory, max_size, retention"},
        Rejected{"printk_section_misspelt", R"({"printK": {}})", "printK", "did you mean \"printk\"?"},
        Rejected{"unknown_key_far", R"({"verbosity": 3})", "verbosity",
                 "unknown key; valid keys here: socket, snapshots, tracing, verdicts, printk, log_level"},
        Rejected{"unknown_key_in_section_far", R"({"snapshots": {"compress": true}})", "snapshots.compress",
                 "valid keys here: directory, interval, retention"}),
    [](const auto& test) { return std::string(test.param.name); });

TEST(Config, UnknownOnlySuggestsAnUnambiguousNeighbour) {
    // "on" is two edits from "off" but too short for that to mean a typo.
    const ConfigResult result = parse_config(R"({"log_level": "on"})");
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].message.find("did you mean"), std::string::npos) << result.errors[0].message;
}

// --- many errors at once ----------------------------------------------------------------

TEST(Config, ReportsEveryErrorNotJustTheFirst) {
    const ConfigResult result = parse_config(R"({
        "socket": {"path": "relative", "mode": "0666", "owner": "root"},
        "snapshots": {"interval": "0s", "retention": 0},
        "tracing": {"buffer_size": "3M", "allocators": [1, "slab"]},
        "printk": {"enabled": "on", "lines": 0, "file": {"max_size": "1K", "retention": 0, "keep": 1}},
        "log_level": "loud",
        "extra": 1
    })");
    EXPECT_FALSE(result.settings.has_value());
    EXPECT_EQ(keys_of(result.errors),
              (std::vector<std::string>{"extra", "log_level", "printk.enabled", "printk.file.keep",
                                        "printk.file.max_size", "printk.file.retention", "printk.lines",
                                        "snapshots.interval", "snapshots.retention", "socket.mode", "socket.owner",
                                        "socket.path", "tracing.allocators[0]", "tracing.allocators[1]",
                                        "tracing.buffer_size"}));
}

TEST(Config, ATypeErrorInASectionStillChecksTheOtherSections) {
    const ConfigResult result = parse_config(R"({"socket": 1, "snapshots": {"retention": 0}})");
    EXPECT_EQ(keys_of(result.errors), (std::vector<std::string>{"snapshots.retention", "socket"}));
}

TEST(Config, SyntaxErrorGivesLineAndColumn) {
    // A trailing comma on line 3 (JSON allows none).
    const ConfigResult result = parse_config("{\n  \"log_level\": \"info\",\n}\n");
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].key, "");
    EXPECT_NE(result.errors[0].message.find("line 3, column 1"), std::string::npos) << result.errors[0].message;
    // nlohmann's internal exception tag is noise to a user.
    EXPECT_EQ(result.errors[0].message.find("json.exception"), std::string::npos) << result.errors[0].message;
}

TEST(Config, InvalidUtf8IsASyntaxErrorNotAThrow) {
    const ConfigResult result = parse_config("{\"log_level\": \"\xff\"}");
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].key, "");
}

// --- files and formatting ---------------------------------------------------------------

TEST(Config, LoadingAMissingFileNamesThePathAndTheReason) {
    const std::filesystem::path missing = kConfigFixtures / "does-not-exist.conf";
    const ConfigResult result = load_config(missing);
    EXPECT_FALSE(result.settings.has_value());
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0], (ConfigError{"", "cannot read " + missing.string() + ": No such file or directory"}));
}

TEST(Config, LoadingADirectoryNamesThePathAndTheReason) {
    const ConfigResult result = load_config(kConfigFixtures);
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].message, "cannot read " + kConfigFixtures.string() + ": Is a directory");
}

TEST(Config, LoadingAnEndlessFileStops) {
    const ConfigResult result = load_config("/dev/zero");
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].message, "/dev/zero is larger than 1 MiB; is it the right file?");
}

TEST(Config, LoadsAValidFile) {
    const ConfigResult result = load_config(kConfigFixtures / "custom.conf");
    ASSERT_TRUE(result.errors.empty()) << format_errors("custom.conf", result.errors);
    EXPECT_EQ(result.settings->snapshots.interval, std::chrono::hours{1});
    EXPECT_EQ(result.settings->snapshots.directory, "/srv/kleakd");
    EXPECT_FALSE(result.settings->tracing.kmem_cache);
}

TEST(Config, FormatsOneLinePerErrorWithPathAndKey) {
    const std::vector<ConfigError> errors{
        {"snapshots.retention", "0 is out of range; must be an integer from 1 to 10000"},
        {"", "invalid JSON: parse error at line 2, column 3: oops"},
    };
    EXPECT_EQ(format_errors("/etc/kleakd/kleakd.conf", errors),
              "/etc/kleakd/kleakd.conf: snapshots.retention: 0 is out of range; must be an integer from 1 to 10000\n"
              "/etc/kleakd/kleakd.conf: invalid JSON: parse error at line 2, column 3: oops\n");
    EXPECT_EQ(format_errors("/etc/kleakd/kleakd.conf", {}), "");
    EXPECT_EQ(format_error("/etc/kleakd/kleakd.conf", errors[0]),
              "/etc/kleakd/kleakd.conf: snapshots.retention: 0 is out of range; must be an integer from 1 to 10000");
}

TEST(Config, BrokenFileReportIsStable) {
    // Golden: the whole report for a file with one mistake of each kind, as
    // an admin would see it from the daemon.
    const std::filesystem::path broken = kConfigFixtures / "broken.conf";
    const ConfigResult result = load_config(broken);
    EXPECT_FALSE(result.settings.has_value());
    EXPECT_EQ(format_errors("kleakd.conf", result.errors), read_text(kConfigFixtures / "broken.expected"));
}

// --- the config in force ------------------------------------------------------------------

TEST(Config, InForceUsesTheFileFormat) {
    EXPECT_EQ(settings_to_json(Settings{}), nlohmann::json::parse(R"({
        "socket": {"path": "/run/kleakd/kleakd.sock", "group": "kleakd", "mode": "0660", "admin_group": "",
                   "max_clients": 64, "idle_timeout": "60s", "max_unread": "64M"},
        "snapshots": {"directory": "/var/lib/kleakd/snapshots", "interval": "60s", "retention": 60,
                      "checkpoint_interval": "60s"},
        "tracing": {"buffer_size": "8M", "allocators": ["kmalloc", "kmem_cache", "percpu", "vmalloc"], "attach": "auto",
                    "stacks": "suspects", "stack_sample_shift": 3},
        "verdicts": {"interval": "10s", "window": "900s", "recent": "60s", "min_rise": 4},
        "printk": {"enabled": true, "lines": 10000,
                   "file": {"enabled": false, "directory": "/var/lib/kleakd/printk", "max_size": "16M",
                            "retention": 5}},
        "log_level": "info"
    })"));
}

TEST(Config, InForceRoundTripsThroughTheParser) {
    Settings custom;
    custom.socket = {"/tmp/x/k.sock", "wheel", 0600};
    custom.snapshots = {"/srv/snaps", std::chrono::hours{2}, 10000, std::chrono::minutes{5}};
    custom.tracing = {16384, true, false, /*page=*/true, /*percpu=*/false, /*vmalloc=*/true, "raw_tp", "all", 0};
    custom.printk = {false, 1000000, true, "/var/log/kleakd printk", 100000, 1000};
    custom.log_level = "trace";
    Settings byte_exact;  // sizes with no exact K/M/G form go out as plain byte counts
    byte_exact.printk.file_max_size = (1u << 30) - 1;
    byte_exact.printk.lines = 1;
    byte_exact.printk.file_retention = 1;
    for (const Settings& settings : {Settings{}, custom, byte_exact}) {
        const std::string text = settings_to_json(settings).dump(2);
        EXPECT_EQ(parse_valid(text), settings) << text;
    }
}

}  // namespace
}  // namespace kleak::config
