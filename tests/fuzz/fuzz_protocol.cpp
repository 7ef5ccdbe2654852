// libFuzzer target: the query protocol as the daemon reads it (framing,
// decode_request, the error reply that quotes request values) and as
// kleakctl reads replies (decode_response). The input is bytes from a
// client socket: any number of lines, of any content.
//
// Besides "no crash, no leak, no hang", it checks what the codec promises:
// exactly one of request and error; every reply is one line; a decoded
// request, encoded again, decodes to the same request.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proto/protocol.h"

namespace {

using namespace kleak::proto;

void check(bool ok) {
    if (!ok) std::abort();  // a broken promise is a finding, like a crash
}

bool one_line(const std::string& reply) {
    return !reply.empty() && reply.back() == '\n' && reply.find('\n') == reply.size() - 1;
}

void decode_one(std::string_view line) {
    const DecodedRequest decoded = decode_request(line);
    check(decoded.request.has_value() != decoded.error.has_value());
    if (decoded.error) {
        check(one_line(encode_error(decoded.id, *decoded.error)));
        return;
    }
    const std::string again = encode_request(*decoded.request);
    check(one_line(again));
    const DecodedRequest round_trip = decode_request(std::string_view(again).substr(0, again.size() - 1));
    check(round_trip.request == decoded.request);

    std::string why_not;
    (void)decode_response(line, why_not);  // the client's side of the same bytes
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    // A small max_line as well as the real one, so the too_large path is
    // reached with inputs of fuzzer size.
    for (const std::size_t max_line : {kMaxRequestBytes, std::size_t{64}}) {
        LineReader reader(max_line);
        // Fed in two pieces: a line split across reads must read the same.
        const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
        reader.feed(input.substr(0, split));
        std::string line;
        bool fed_rest = false;
        while (true) {
            const LineReader::Status status = reader.next(line);
            if (status == LineReader::Status::line) {
                check(line.size() < max_line);
                if (max_line == kMaxRequestBytes) decode_one(line);
            } else if (status == LineReader::Status::too_large) {
                check(one_line(encode_error(std::nullopt, line_too_large_error(max_line))));
            } else if (!fed_rest) {
                reader.feed(input.substr(split));
                fed_rest = true;
            } else {
                break;
            }
        }
        check(reader.buffered() < max_line);
    }
    // The whole input as one line, newlines and all, as a caller other
    // than LineReader might pass it.
    decode_one(input);
    return 0;
}
