// The virtual board: a Verilator model of the board top's UART bridge (hw/board.py UartBridge
// around the engine, exactly as `hmtx synth` builds it; only the PLL and the pins are left out)
// behind a pseudo-terminal, with the UART line simulated bit by bit.
//
// The host's bytes (whatever a process writes to the pty's slave, e.g. the unchanged pyserial
// backend) are shifted into the design's `rx` pin as 8N1 frames at the line rate the host set on
// the port (termios, as a USB-UART bridge would take it), in simulated time; the design's `tx`
// pin is sampled mid-bit at that same rate, and each byte received goes back to the host. A
// design whose divisor, clock or framing is wrong garbles bytes here, as it would on the board.
//
// Simulated time only runs while something is happening: bits on either line, or a response
// the device still owes (protocol framing, docs/protocol.md section 1: every non-empty frame
// sent to the device is answered by exactly one frame ending in END). Otherwise the process
// sleeps on the pty. Simulated clock cycles are therefore wire time plus device time, and the
// stats file (--stats) reports them with the byte and frame counts.
//
// stdout: one line "port /dev/pts/N" once the port is ready. stderr: a log.
// Built and started by hmtx.sim.board_sim (python); see docs/verification.md.

#include "Vboard.h"
#include "verilated.h"

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <termios.h>
#include <unistd.h>

namespace {

// struct termios2 (asm/termbits.h clashes with termios.h): the line rate as the host set it,
// also a non-standard one (pyserial sets those through BOTHER).
struct termios2_ {
    uint32_t c_iflag, c_oflag, c_cflag, c_lflag;
    uint8_t c_line;
    uint8_t c_cc[19];
    uint32_t c_ispeed, c_ospeed;
};
#define TCGETS2_ _IOR('T', 0x2A, struct termios2_)

constexpr uint8_t END = 0xC0;
volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

struct Options {
    double clk_hz = 100e6;
    double baud = 1e6;            // the line rate until the host sets one (and with --fixed-baud)
    bool follow_tty = true;
    uint64_t reset_cycles = 1500;
    double quiet_s = 0.05;        // no response for this long (simulated): nothing is owed after all
    std::string stats;
};

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "board_sim: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) { std::fprintf(stderr, "board_sim: %s needs a value\n", a.c_str()); std::exit(2); }
            return argv[++i];
        };
        if (a == "--clk-hz") o.clk_hz = std::atof(next());
        else if (a == "--baud") o.baud = std::atof(next());
        else if (a == "--fixed-baud") o.follow_tty = false;
        else if (a == "--reset-cycles") o.reset_cycles = std::strtoull(next(), nullptr, 10);
        else if (a == "--quiet-s") o.quiet_s = std::atof(next());
        else if (a == "--stats") o.stats = next();
        else if (a.rfind("+", 0) == 0) continue;     // +verilator+... for Verilated
        else { std::fprintf(stderr, "board_sim: unknown option %s\n", a.c_str()); std::exit(2); }
    }
    if (o.clk_hz <= 0 || o.baud <= 0) { std::fprintf(stderr, "board_sim: clock and baud must be positive\n"); std::exit(2); }
    return o;
}

struct Stats {
    uint64_t cycles = 0, bytes_in = 0, bytes_out = 0, frames_in = 0, frames_out = 0;
    uint64_t framing_errors = 0, quiet_timeouts = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Options opt = parse(argc, argv);
    prctl(PR_SET_PDEATHSIG, SIGTERM);            // never outlive whoever started us
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    std::signal(SIGPIPE, SIG_IGN);

    // The pseudo-terminal. We keep the slave open ourselves, so the master never sees a hangup
    // between two host connections (and what a host leaves unread, the next one's resync drops).
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) die("posix_openpt");
    const char* slave_name = ptsname(master);
    if (!slave_name) die("ptsname");
    std::string port = slave_name;
    int slave = open(port.c_str(), O_RDWR | O_NOCTTY);
    if (slave < 0) die("open slave");
    struct termios t;
    if (tcgetattr(slave, &t) != 0) die("tcgetattr");
    cfmakeraw(&t);
    tcsetattr(slave, TCSANOW, &t);
    if (fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK) != 0) die("fcntl");

    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    auto top = std::make_unique<Vboard>(ctx.get());

    Stats st;
    double line_baud = opt.baud;
    double bit = opt.clk_hz / line_baud;         // clocks per bit on the line
    auto update_baud = [&]() {
        if (!opt.follow_tty) return;
        termios2_ t2;
        if (ioctl(master, TCGETS2_, &t2) == 0 && t2.c_ospeed > 0 && t2.c_ospeed != line_baud) {
            line_baud = t2.c_ospeed;
            bit = opt.clk_hz / line_baud;
            std::fprintf(stderr, "board_sim: line rate %.0f baud (%.3f clocks per bit)\n", line_baud, bit);
        }
    };

    uint64_t cycle = 0;
    auto tick = [&]() {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
        cycle++;
    };

    // Power-on reset (BoardTop holds `sync` in reset for 15 us after the PLL locks).
    top->rx = 1;
    top->rst = 1;
    for (uint64_t i = 0; i < opt.reset_cycles; i++) tick();
    top->rst = 0;

    std::printf("port %s\n", port.c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "board_sim: %s, clock %.6g MHz, line %.0f baud%s\n", port.c_str(), opt.clk_hz / 1e6,
                 line_baud, opt.follow_tty ? " (follows the port's setting)" : "");

    std::deque<uint8_t> to_dev;                  // host bytes not yet on the rx line
    std::vector<uint8_t> to_host;                // bytes received from tx, not yet written to the pty
    // rx line driver: the frame being shifted in
    bool rx_busy = false;
    double rx_start = 0;
    double rx_next_free = -1e300;                // when the line is free for the next frame
    uint16_t rx_frame = 0x3FF;
    bool host_frame_open = false;                // a non-empty frame is being sent to the device
    int64_t owed = 0;                            // response frames the device owes
    // tx line receiver
    int tx_state = 0;                            // 0 idle, 1..10 sampling bit (state-1), -1 wait for high
    double tx_start = 0;
    uint16_t tx_bits = 0;
    bool tx_frame_open = false;                  // the device has begun a response frame and not ended it
    uint64_t last_activity = 0;                  // last cycle a bit moved on either line
    // `owed` counts the frames the host's bytes close, but a host's END can also close a frame
    // the device assembled from line noise (a host at the wrong rate, a reopened port), which the
    // device answers too. So the simulation only sleeps once the line has been still for a few
    // byte times and no response is half sent: the unannounced answer and the one after it get
    // out instead of freezing mid-way until the host writes again.
    auto linger_cycles = [&]() { return (uint64_t)std::ceil(40 * bit); };
    const uint64_t quiet_cycles = (uint64_t)std::llround(opt.quiet_s * opt.clk_hz);
    Stats written;
    bool stats_once = false;

    auto write_stats = [&]() {
        if (opt.stats.empty()) return;
        st.cycles = cycle;
        if (stats_once && std::memcmp(&st, &written, sizeof st) == 0) return;
        std::string tmp = opt.stats + ".tmp";
        FILE* f = std::fopen(tmp.c_str(), "w");
        if (!f) return;
        std::fprintf(f,
                     "{\"port\": \"%s\", \"clk_hz\": %.17g, \"line_baud\": %.17g, \"cycles\": %llu, "
                     "\"reset_cycles\": %llu, \"bytes_in\": %llu, \"bytes_out\": %llu, \"frames_in\": %llu, "
                     "\"frames_out\": %llu, \"framing_errors\": %llu, \"quiet_timeouts\": %llu}\n",
                     port.c_str(), opt.clk_hz, line_baud, (unsigned long long)cycle,
                     (unsigned long long)opt.reset_cycles, (unsigned long long)st.bytes_in,
                     (unsigned long long)st.bytes_out, (unsigned long long)st.frames_in,
                     (unsigned long long)st.frames_out, (unsigned long long)st.framing_errors,
                     (unsigned long long)st.quiet_timeouts);
        std::fclose(f);
        std::rename(tmp.c_str(), opt.stats.c_str());
        written = st;
        stats_once = true;
    };

    auto pull = [&]() {                          // host -> to_dev, without blocking
        uint8_t buf[4096];
        for (;;) {
            ssize_t n = read(master, buf, sizeof buf);
            if (n > 0) {
                update_baud();
                to_dev.insert(to_dev.end(), buf, buf + n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            break;                               // EAGAIN, or EIO (no slave open: cannot happen)
        }
    };
    auto push = [&]() {                          // to_host -> host, without blocking
        size_t done = 0;
        while (done < to_host.size()) {
            ssize_t n = write(master, to_host.data() + done, to_host.size() - done);
            if (n > 0) { done += n; continue; }
            if (n < 0 && errno == EINTR) continue;
            break;                               // EAGAIN: the host is not reading; try later
        }
        to_host.erase(to_host.begin(), to_host.begin() + done);
    };

    while (!g_stop) {
        bool idle = !rx_busy && to_dev.empty() && tx_state == 0 && owed == 0 && !tx_frame_open
                    && cycle - last_activity > linger_cycles();
        if (idle) {
            push();
            write_stats();
            struct pollfd p = {master, POLLIN, 0};
            if (!to_host.empty()) p.events |= POLLOUT;
            int r = poll(&p, 1, 1000);
            if (r < 0 && errno != EINTR) die("poll");
            pull();
            continue;
        }
        // A batch of clock cycles, then the pty.
        for (int k = 0; k < 256; k++) {
            // rx: the host's frames, back to back while there are bytes
            if (rx_busy && cycle >= rx_next_free) {
                rx_busy = false;
                top->rx = 1;
            }
            if (!rx_busy && !to_dev.empty()) {
                // back to back after the frame that just ended, else from now
                rx_start = rx_next_free > cycle - 1.0 ? rx_next_free : (double)cycle;
                rx_next_free = rx_start + 10 * bit;
                uint8_t b = to_dev.front();
                to_dev.pop_front();
                rx_frame = (uint16_t)((1u << 9) | (b << 1));
                rx_busy = true;
                st.bytes_in++;
                if (b == END) {
                    if (host_frame_open) { owed++; st.frames_in++; }
                    host_frame_open = false;
                } else {
                    host_frame_open = true;
                }
            }
            if (rx_busy) {
                int i = (int)((cycle - rx_start) / bit);
                top->rx = (rx_frame >> (i < 10 ? i : 9)) & 1;
                last_activity = cycle;
            }
            tick();
            // tx: sample each bit in its middle
            uint8_t tx = top->tx & 1;
            if (tx_state == 0) {
                if (!tx) { tx_state = 1; tx_start = cycle - 0.5; tx_bits = 0; last_activity = cycle; }
            } else if (tx_state > 0) {
                last_activity = cycle;
                int i = tx_state - 1;
                if (cycle >= tx_start + (i + 0.5) * bit) {
                    if (i == 0 && tx) {
                        tx_state = 0;                                // a glitch, not a start bit
                    } else {
                        tx_bits |= (uint16_t)(tx << i);
                        tx_state++;
                        if (tx_state == 11) {
                            uint8_t b = (uint8_t)(tx_bits >> 1);
                            to_host.push_back(b);                    // as a UART bridge passes it on
                            st.bytes_out++;
                            if (!(tx_bits >> 9 & 1)) {
                                st.framing_errors++;
                                std::fprintf(stderr, "board_sim: framing error on tx (byte 0x%02x) at cycle %llu\n",
                                             b, (unsigned long long)cycle);
                                tx_state = -1;
                            } else {
                                tx_state = 0;
                            }
                            tx_frame_open = b != END;
                            if (b == END) {
                                st.frames_out++;
                                if (owed > 0) owed--;
                            }
                        }
                    }
                }
            } else if (tx) {
                tx_state = 0;
            }
        }
        if ((owed > 0 || tx_frame_open) && !rx_busy && to_dev.empty() && tx_state == 0
            && cycle - last_activity > quiet_cycles) {
            std::fprintf(stderr, "board_sim: no response for %.3g s (simulated) with %lld frame(s) owed%s; "
                         "waiting for the host\n", opt.quiet_s, (long long)owed,
                         tx_frame_open ? " and a response unfinished" : "");
            st.quiet_timeouts++;
            owed = 0;
            tx_frame_open = false;
        }
        pull();
        // the counters are on disk before the host can see the response that ends a transaction
        if (!rx_busy && to_dev.empty() && tx_state == 0 && owed == 0) write_stats();
        if (!to_host.empty()) push();
    }
    push();
    write_stats();
    std::fprintf(stderr, "board_sim: stopped after %llu cycles (%.6f s simulated), %llu bytes in, %llu out, "
                 "%llu framing errors\n", (unsigned long long)cycle, cycle / opt.clk_hz,
                 (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                 (unsigned long long)st.framing_errors);
    top->final();
    close(slave);
    close(master);
    return 0;
}
