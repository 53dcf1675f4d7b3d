/* The least any engine can be, for benchmarks/mqtt_e2e.py's `--reference c`:
 * blocking TCP (TCP_NODELAY), MQTT 3.1.1 QoS 0, bench/in -> threshold -> bench/out,
 * no event loop, no library, no allocation per message. Payloads are the benchmark's own
 * {"seq":N,"t":T,"temp":X}. Prints READY once subscribed; on SIGTERM prints
 * {"handled": N}. Built by the benchmark with the machine's C compiler; never shipped.
 *
 *     cc -O2 -o ref_forward ref_forward.c && ./ref_forward PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag = 0;
static void on_term(int sig) { (void)sig; stop_flag = 1; }

static void send_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, 0);
        if (w < 0) { if (errno == EINTR) continue; perror("send"); exit(1); }
        p += w; n -= (size_t)w;
    }
}

static size_t put_varint(unsigned char *o, size_t n) {
    size_t i = 0;
    do { unsigned char b = n % 128; n /= 128; o[i++] = b | (n ? 0x80 : 0); } while (n);
    return i;
}

/* the number after "key": in a flat JSON object, or -1 */
static long long field(const char *s, size_t len, const char *key) {
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 3 < len; i++) {
        if (s[i] == '"' && memcmp(s + i + 1, key, kl) == 0 && s[i + 1 + kl] == '"') {
            size_t j = i + kl + 2;
            while (j < len && (s[j] == ':' || s[j] == ' ')) j++;
            return strtoll(s + j, NULL, 10);
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: ref_forward PORT\n"); return 2; }
    struct sigaction sa = {0};
    sa.sa_handler = on_term; /* no SA_RESTART: recv returns EINTR and the loop ends */
    sigaction(SIGTERM, &sa, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static const unsigned char conn[] = {0x10, 19, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60,
                                         0, 7, 'r', 'e', 'f', '-', 'f', 'w', 'd'};
    send_all(fd, conn, sizeof conn);
    static const unsigned char sub[] = {0x82, 13, 0, 1, 0, 8, 'b', 'e', 'n', 'c', 'h',
                                        '/', 'i', 'n', 0};
    send_all(fd, sub, sizeof sub);

    static unsigned char buf[1 << 20];
    unsigned char out[512];
    size_t have = 0;
    long long handled = 0;
    int ready = 0;
    while (!stop_flag) {
        ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
        if (r < 0) { if (errno == EINTR) continue; perror("recv"); return 1; }
        if (r == 0) break;
        have += (size_t)r;
        size_t pos = 0;
        while (have - pos >= 2) {
            size_t i = pos + 1, size = 0, shift = 0;
            for (;;) {
                if (i >= have) goto more;
                unsigned char b = buf[i++];
                size |= (size_t)(b & 0x7F) << shift;
                if (!(b & 0x80)) break;
                shift += 7;
            }
            if (i + size > have) goto more;
            unsigned char first = buf[pos];
            if ((first & 0xF0) == 0x90 && !ready) { puts("READY"); fflush(stdout); ready = 1; }
            if ((first & 0xF0) == 0x30) {
                size_t tl = (size_t)buf[i] << 8 | buf[i + 1];
                const char *pl = (const char *)buf + i + 2 + tl;
                size_t pll = size - 2 - tl;
                long long seq = field(pl, pll, "seq"), t = field(pl, pll, "t");
                long long temp = field(pl, pll, "temp");
                char body[256];
                int bl = snprintf(body, sizeof body, "%c%cbench/out{\"seq\":%lld,\"t\":%lld,"
                                  "\"state\":\"%s\"}", 0, 9, seq, t, temp > 30 ? "on" : "off");
                out[0] = 0x30;
                size_t h = 1 + put_varint(out + 1, (size_t)bl);
                memcpy(out + h, body, (size_t)bl);
                send_all(fd, out, h + (size_t)bl);
                handled++;
            }
            pos = i + size;
        }
    more:
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    printf("{\"handled\": %lld}\n", handled);
    fflush(stdout);
    return 0;
}
