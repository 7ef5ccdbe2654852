// Sizes: parsing --buffer-size and plain byte counts, formatting, and the
// overflow advice.
#include <gtest/gtest.h>

#include "core/sizes.h"

namespace kleak::core {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;

struct Accepted {
    const char* text;
    std::uint64_t bytes;
};

void PrintTo(const Accepted& a, std::ostream* os) { *os << '"' << a.text << '"'; }

class ParseBufferSizeAccepts : public ::testing::TestWithParam<Accepted> {};

TEST_P(ParseBufferSizeAccepts, ExactBytes) {
    const SizeParse parsed = parse_buffer_size(GetParam().text);
    ASSERT_TRUE(parsed.bytes.has_value()) << parsed.error;
    EXPECT_EQ(*parsed.bytes, GetParam().bytes);
    EXPECT_EQ(parsed.error, "");
}

INSTANTIATE_TEST_SUITE_P(Sizes, ParseBufferSizeAccepts,
                         ::testing::Values(Accepted{"8M", 8 * MiB}, Accepted{"8m", 8 * MiB},
                                           Accepted{"512K", 512 * KiB}, Accepted{"512k", 512 * KiB},
                                           Accepted{"16KiB", 16 * KiB}, Accepted{"16kib", 16 * KiB},
                                           Accepted{"16MB", 16 * MiB}, Accepted{"1G", GiB},
                                           Accepted{"1GiB", GiB}, Accepted{"65536", 65536},
                                           Accepted{"16384", 16384}, Accepted{"16384B", 16384}));

struct Rejected {
    const char* text;
    const char* reason;  // a phrase the message must contain
};

void PrintTo(const Rejected& r, std::ostream* os) { *os << '"' << r.text << '"'; }

class ParseBufferSizeRejects : public ::testing::TestWithParam<Rejected> {};

TEST_P(ParseBufferSizeRejects, WithAMessage) {
    const SizeParse parsed = parse_buffer_size(GetParam().text);
    EXPECT_FALSE(parsed.bytes.has_value()) << "accepted as " << parsed.bytes.value_or(0);
    EXPECT_NE(parsed.error.find(GetParam().reason), std::string::npos) << parsed.error;
    // The message quotes the input and says what would be valid.
    EXPECT_NE(parsed.error.find("'" + std::string(GetParam().text) + "'"), std::string::npos) << parsed.error;
    EXPECT_NE(parsed.error.find("a power of two from 16K to 1G"), std::string::npos) << parsed.error;
}

INSTANTIATE_TEST_SUITE_P(Sizes, ParseBufferSizeRejects,
                         ::testing::Values(Rejected{"0", "too small"}, Rejected{"3M", "not a power of two"},
                                           Rejected{"1K", "too small"}, Rejected{"2048", "too small"},
                                           Rejected{"2G", "too large"},
                                           Rejected{"99999999999999999G", "too large"},
                                           Rejected{"99999999999999999999", "not a size"},
                                           Rejected{"abc", "not a size"}, Rejected{"8X", "unknown unit"},
                                           Rejected{"8 M", "unknown unit"}, Rejected{"-8M", "not a size"},
                                           Rejected{"", "not a size"}));

TEST(ParseBufferSize, ExactMessages) {
    EXPECT_EQ(parse_buffer_size("3M").error,
              "'3M' is not a power of two (BPF ring buffers must be); use a power of two from 16K to 1G, e.g. 8M, "
              "512K, 65536");
    EXPECT_EQ(parse_buffer_size("").error, "'' is not a size; use a power of two from 16K to 1G, e.g. 8M, 512K, 65536");
}

TEST(ParseBufferSize, LimitsMatchTheConstants) {
    EXPECT_EQ(parse_buffer_size("16K").bytes, kMinBufferSize);
    EXPECT_EQ(parse_buffer_size("1G").bytes, kMaxBufferSize);
    EXPECT_EQ(parse_buffer_size("8M").bytes, kDefaultBufferSize);
    EXPECT_EQ(parse_buffer_size("2048K").bytes, 2 * MiB);
}

// --- parse_byte_size: the same notation, any byte count in a range ------------------

constexpr std::uint64_t kFileMin = 64 * KiB;
constexpr std::uint64_t kFileMax = GiB;

class ParseByteSizeAccepts : public ::testing::TestWithParam<Accepted> {};

TEST_P(ParseByteSizeAccepts, ExactBytes) {
    const SizeParse parsed = parse_byte_size(GetParam().text, kFileMin, kFileMax);
    ASSERT_TRUE(parsed.bytes.has_value()) << parsed.error;
    EXPECT_EQ(*parsed.bytes, GetParam().bytes);
    EXPECT_EQ(parsed.error, "");
}

INSTANTIATE_TEST_SUITE_P(Sizes, ParseByteSizeAccepts,
                         ::testing::Values(Accepted{"64K", 64 * KiB}, Accepted{"65536", 65536},
                                           Accepted{"65537", 65537}, Accepted{"100000", 100000},
                                           Accepted{"3M", 3 * MiB}, Accepted{"16m", 16 * MiB},
                                           Accepted{"16MB", 16 * MiB}, Accepted{"1000K", 1000 * KiB},
                                           Accepted{"1G", GiB}, Accepted{"1gib", GiB},
                                           Accepted{"1024M", GiB}, Accepted{"1073741824B", GiB}));

class ParseByteSizeRejects : public ::testing::TestWithParam<Rejected> {};

TEST_P(ParseByteSizeRejects, WithAMessage) {
    const SizeParse parsed = parse_byte_size(GetParam().text, kFileMin, kFileMax);
    EXPECT_FALSE(parsed.bytes.has_value()) << "accepted as " << parsed.bytes.value_or(0);
    EXPECT_NE(parsed.error.find(GetParam().reason), std::string::npos) << parsed.error;
    EXPECT_NE(parsed.error.find("'" + std::string(GetParam().text) + "'"), std::string::npos) << parsed.error;
    EXPECT_NE(parsed.error.find("use a size from 64K to 1G"), std::string::npos) << parsed.error;
    EXPECT_EQ(parsed.error.find("power of two"), std::string::npos) << parsed.error;
}

INSTANTIATE_TEST_SUITE_P(Sizes, ParseByteSizeRejects,
                         ::testing::Values(Rejected{"65535", "too small"}, Rejected{"63K", "too small"},
                                           Rejected{"0", "too small"}, Rejected{"1073741825", "too large"},
                                           Rejected{"1025M", "too large"}, Rejected{"2G", "too large"},
                                           Rejected{"99999999999999999G", "too large"},
                                           Rejected{"18446744073709551615", "too large"},
                                           Rejected{"99999999999999999999", "not a size"},
                                           Rejected{"", "not a size"}, Rejected{"-1M", "not a size"},
                                           Rejected{"M", "not a size"}, Rejected{"16X", "unknown unit"},
                                           Rejected{"16 M", "unknown unit"}, Rejected{"1.5M", "unknown unit"},
                                           Rejected{"16T", "unknown unit"}));

TEST(ParseByteSize, ExactMessage) {
    EXPECT_EQ(parse_byte_size("32K", kFileMin, kFileMax).error,
              "'32K' is too small; use a size from 64K to 1G: a number of bytes with an optional K, M or G suffix, "
              "e.g. 16M");
}

TEST(ParseByteSize, BoundsAreInclusiveAndTheExampleIsInRange) {
    EXPECT_EQ(parse_byte_size("1000", 1000, 1000).bytes, 1000u);
    EXPECT_FALSE(parse_byte_size("999", 1000, 1000).bytes.has_value());
    EXPECT_FALSE(parse_byte_size("1001", 1000, 1000).bytes.has_value());
    EXPECT_EQ(parse_byte_size("1K", 1, 4 * KiB).bytes, KiB);
    // The example in the message is never one the range rejects.
    EXPECT_NE(parse_byte_size("8K", 1 * KiB, 4 * KiB).error.find("e.g. 4K"), std::string::npos);
    EXPECT_NE(parse_byte_size("8G", 32 * MiB, 4 * GiB).error.find("e.g. 32M"), std::string::npos);
}

TEST(ParseByteSize, AgreesWithParseBufferSizeOnEveryValidBufferSize) {
    // One notation: every ring size parses to the same bytes as a plain size.
    for (std::uint64_t bytes = kMinBufferSize; bytes <= kMaxBufferSize; bytes *= 2) {
        const std::string text = format_size(bytes);
        EXPECT_EQ(parse_byte_size(text, kMinBufferSize, kMaxBufferSize).bytes, parse_buffer_size(text).bytes) << text;
    }
}

TEST(FormatSize, PicksTheLargestExactUnit) {
    EXPECT_EQ(format_size(8 * MiB), "8M");
    EXPECT_EQ(format_size(4096), "4K");
    EXPECT_EQ(format_size(1000), "1000");
    EXPECT_EQ(format_size(GiB), "1G");
    EXPECT_EQ(format_size(2 * GiB), "2G");
    EXPECT_EQ(format_size(3 * MiB), "3M");
    EXPECT_EQ(format_size(1536), "1536");
    EXPECT_EQ(format_size(1536 * KiB), "1536K");
    EXPECT_EQ(format_size(1024), "1K");
    EXPECT_EQ(format_size(0), "0");
}

TEST(FormatSize, RoundTripsThroughParseForEveryValidSize) {
    for (std::uint64_t bytes = kMinBufferSize; bytes <= kMaxBufferSize; bytes *= 2) {
        const SizeParse parsed = parse_buffer_size(format_size(bytes));
        ASSERT_TRUE(parsed.bytes.has_value()) << format_size(bytes) << ": " << parsed.error;
        EXPECT_EQ(*parsed.bytes, bytes);
    }
}

TEST(SuggestBufferSize, NoDropsNoAdvice) {
    EXPECT_EQ(suggest_buffer_size(8 * MiB, 8 * MiB, 0, 48), 0u);
}

TEST(SuggestBufferSize, TwiceWhatTheBurstNeededRoundedUpToAPowerOfTwo) {
    // 8M backlog + 1000 * 48 dropped = 8,436,608; doubled 16,873,216; next power of two 32M.
    EXPECT_EQ(suggest_buffer_size(8 * MiB, 4 * MiB, 1000, 48), 32 * MiB);
    // The peak backlog counts when it is above the current size.
    EXPECT_EQ(suggest_buffer_size(4 * KiB, 1 * MiB, 10, 48), 4 * MiB);
    // A tiny burst: 4096 + 48 = 4144, doubled 8288, rounded to 16K.
    EXPECT_EQ(suggest_buffer_size(4 * KiB, 0, 1, 48), 16 * KiB);
    // Exactly a power of two after doubling is not rounded further.
    EXPECT_EQ(suggest_buffer_size(4 * KiB, 0, 4096 / 32, 32), 16 * KiB);
}

TEST(SuggestBufferSize, CappedAtTheMaximum) {
    EXPECT_EQ(suggest_buffer_size(512 * MiB, 0, 1, 48), kMaxBufferSize);
    EXPECT_EQ(suggest_buffer_size(kMaxBufferSize, kMaxBufferSize, 1'000'000, 48), kMaxBufferSize);
    EXPECT_EQ(suggest_buffer_size(256 * MiB, 0, 1, 48), kMaxBufferSize);
}

TEST(SuggestBufferSize, AlwaysAValidBufferSize) {
    for (std::uint64_t current = kMinBufferSize; current <= kMaxBufferSize; current *= 4) {
        for (std::uint64_t dropped : {1ull, 100ull, 1'000'000ull}) {
            const std::uint64_t suggested = suggest_buffer_size(current, current / 2, dropped, 48);
            EXPECT_TRUE(parse_buffer_size(format_size(suggested)).bytes.has_value())
                << current << " " << dropped << " -> " << suggested;
            EXPECT_GT(suggested, std::min(current, kMaxBufferSize / 2));
        }
    }
}

}  // namespace
}  // namespace kleak::core
