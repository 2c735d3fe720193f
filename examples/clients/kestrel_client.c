/* Kestrel detection socket, binary format (docs/protocol.md), in C99 with libc only.
 *
 *   cc -std=c99 -Wall -Wextra -O2 -o kestrel_client kestrel_client.c
 *   ./kestrel_client [-s SOCKET] [-f FILE] [-n COUNT]
 *
 * On a socket it sends {"format":"binary"}, skips JSON lines up to the `format` message (the last one in the
 * old framing) and then reads binary frames; -f reads a recorded binary stream. Prints one line per message:
 *
 *   hello labels=80 model=/usr/share/kestrel/models/yolov3-tiny-416.onnx
 *   seq=41 t=81236207890123 1280x720 n=2 | person 0.875 [412.5 200.0 530.2 610.0] ax=0.1250 ay=-0.2500 | ...
 *   status health=ok reason=""
 *   missed count=3
 *
 * -n COUNT stops after COUNT detections messages. Every integer and float is read byte by byte as little-endian
 * (no struct casts), so it runs on any host; lengths in the stream are checked before they are used.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_PAYLOAD (4u << 20) /* readers must accept frames up to 4 MiB; we refuse larger */
#define MAX_LABELS 1024

static void die(const char *what) {
    fprintf(stderr, "kestrel_client: %s\n", what);
    exit(1);
}

/* ---- little-endian reads from a byte buffer (callers check bounds) */
static uint32_t u16le(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t u32le(const unsigned char *p) { return u16le(p) | u16le(p + 2) << 16; }
static uint64_t u64le(const unsigned char *p) { return (uint64_t)u32le(p) | (uint64_t)u32le(p + 4) << 32; }
static float f32le(const unsigned char *p) {
    uint32_t bits = u32le(p);
    float f;
    memcpy(&f, &bits, sizeof f); /* IEEE-754 binary32 on every host this runs on */
    return f;
}

/* ---- buffered input: `need(n)` makes n bytes available at buf + pos, or returns 0 at the end of input */
static int fd = -1;
static unsigned char *buf;
static size_t pos, len, cap;

static int need(size_t n) {
    if (n > cap) die("message too large");
    if (pos + n > cap) { /* not enough room behind pos: move what is left to the front */
        memmove(buf, buf + pos, len - pos);
        len -= pos;
        pos = 0;
    }
    while (len - pos < n) {
        ssize_t got = read(fd, buf + len, cap - len);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die("read failed");
        if (got == 0) return 0;
        len += (size_t)got;
    }
    return 1;
}

/* The next JSON line (NUL-terminated in place, without the newline), or NULL at the end of input. */
static char *next_line(void) {
    size_t scanned = 0;
    for (;;) {
        unsigned char *nl = memchr(buf + pos + scanned, '\n', len - pos - scanned);
        if (nl) {
            char *line = (char *)buf + pos;
            *nl = 0;
            pos = (size_t)(nl - buf) + 1;
            return line;
        }
        scanned = len - pos;
        if (!need(scanned + 1)) return NULL;
    }
}

/* ---- a tiny JSON reader, enough for kestrel's compact output (no spaces; keys are unique enough) */

/* Copy the JSON string starting at s (just after its opening quote) into out; returns the end, or NULL. */
static const char *json_string(const char *s, const char *end, char *out, size_t outlen) {
    size_t n = 0;
    for (; s < end && *s != '"'; s++) {
        if (*s == '\\' && ++s >= end) return NULL; /* \" and \\ (and others, kept as the escaped char) */
        if (n + 1 < outlen) out[n++] = *s;
    }
    if (outlen) out[n] = 0;
    return s < end ? s + 1 : NULL;
}

/* Where the value of "key" starts in json[0..n), or NULL. */
static const char *json_value(const char *json, size_t n, const char *key) {
    char pat[64];
    int k = snprintf(pat, sizeof pat, "\"%s\":", key);
    if (k < 0 || (size_t)k >= sizeof pat) return NULL;
    for (const char *p = json; p + k <= json + n; p++)
        if (memcmp(p, pat, (size_t)k) == 0) return p + k;
    return NULL;
}

static void json_str(const char *json, size_t n, const char *key, char *out, size_t outlen) {
    const char *v = json_value(json, n, key);
    out[0] = 0;
    if (v && v < json + n && *v == '"' && !json_string(v + 1, json + n, out, outlen)) out[0] = 0;
}

static char labels[MAX_LABELS][64];
static unsigned nlabels;

/* hello: "labels":["person","bicycle",...] */
static void read_labels(const char *json, size_t n) {
    const char *end = json + n, *p = json_value(json, n, "labels");
    nlabels = 0;
    if (!p || p >= end || *p++ != '[') return;
    while (p < end && *p == '"' && nlabels < MAX_LABELS) {
        p = json_string(p + 1, end, labels[nlabels++], sizeof labels[0]);
        if (!p || p >= end || *p == ']') return;
        if (*p++ != ',') return;
    }
}

static const char *label(unsigned id) {
    static char unnamed[16];
    if (id < nlabels) return labels[id];
    snprintf(unnamed, sizeof unnamed, "class%u", id);
    return unnamed;
}

/* ---- messages */

static void print_detections(const unsigned char *p, size_t n) {
    if (n < 68) die("detections message too short");
    size_t h = u16le(p + 2), r = u16le(p + 4), count = u16le(p + 6);
    if (h < 68 || r < 32 || h + count * r > n) die("bad detections header");
    printf("seq=%llu t=%llu %lux%lu n=%zu", (unsigned long long)u64le(p + 8), (unsigned long long)u64le(p + 16),
           (unsigned long)u32le(p + 40), (unsigned long)u32le(p + 44), count);
    for (size_t i = 0; i < count; i++) {
        const unsigned char *d = p + h + i * r; /* record i; bytes beyond the 32 we know are ignored */
        printf(" | %s %.3f [%.1f %.1f %.1f %.1f]", label(u16le(d)), f32le(d + 4), f32le(d + 8), f32le(d + 12),
               f32le(d + 16), f32le(d + 20));
        if (u16le(d + 2) & 1) printf(" ax=%.4f ay=%.4f", f32le(d + 24), f32le(d + 28));
    }
    printf("\n");
}

static void print_json_message(int type, const char *json, size_t n) {
    char s[256];
    switch (type) {
    case 1:
        read_labels(json, n);
        json_str(json, n, "path", s, sizeof s); /* the first "path" is the model's */
        printf("hello labels=%u model=%s\n", nlabels, s);
        break;
    case 3:
        json_str(json, n, "health", s, sizeof s);
        printf("status health=%s", s);
        json_str(json, n, "reason", s, sizeof s);
        printf(" reason=\"%s\"\n", s);
        break;
    case 4: {
        const char *v = json_value(json, n, "count");
        unsigned long long count = 0;
        while (v && v < json + n && *v >= '0' && *v <= '9') count = count * 10 + (unsigned)(*v++ - '0');
        printf("missed count=%llu\n", count);
        break;
    }
    case 5:
        json_str(json, n, "error", s, sizeof s);
        printf("error %s\n", s);
        exit(1);
    default: /* 6, `format`: nothing to show */
        break;
    }
}

static void usage(void) {
    fprintf(stderr, "usage: kestrel_client [-s SOCKET] [-f FILE] [-n COUNT]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *sock = "/run/kestrel/detections.sock", *file = NULL;
    unsigned long want = 0, seen = 0;
    int c;
    while ((c = getopt(argc, argv, "s:f:n:")) != -1) {
        if (c == 's') sock = optarg;
        else if (c == 'f') file = optarg;
        else if (c == 'n') {
            char *end;
            want = strtoul(optarg, &end, 10);
            if (*end || end == optarg) usage();
        }
        else usage();
    }
    if (optind != argc) usage();

    if (file) {
        if ((fd = open(file, O_RDONLY)) < 0) die("cannot open the file");
    } else {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(sock) >= sizeof addr.sun_path) die("socket path too long");
        strcpy(addr.sun_path, sock);
        if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0) die("socket() failed");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("cannot connect to the socket");
        static const char cmd[] = "{\"format\":\"binary\"}\n";
        if (write(fd, cmd, sizeof cmd - 1) != (ssize_t)(sizeof cmd - 1)) die("write failed");
    }
    cap = 4 + MAX_PAYLOAD;
    if (!(buf = malloc(cap))) die("out of memory");

    /* A connection starts in the server's default format: JSON Lines start with {"ty, a binary frame with
     * its length (below 4 MiB, so never those bytes). Skip JSON lines up to the `format` switch. */
    if (need(4) && memcmp(buf + pos, "{\"ty", 4) == 0) {
        char *line, type[32];
        do {
            if (!(line = next_line())) die("the stream ended before the format switch");
            json_str(line, strlen(line), "type", type, sizeof type);
            if (strcmp(type, "error") == 0) print_json_message(5, line, strlen(line));
        } while (strcmp(type, "format") != 0);
    }

    while (!want || seen < want) {
        if (!need(4)) {
            if (len > pos) die("the stream ended inside a frame");
            break; /* the end of the stream, at a frame boundary */
        }
        uint32_t n = u32le(buf + pos);
        if (n > MAX_PAYLOAD) die("frame length over 4 MiB: corrupt stream");
        if (n < 4) die("frame too short");
        if (!need(4 + (size_t)n)) die("the stream ended inside a frame");
        const unsigned char *p = buf + pos + 4;
        pos += 4 + (size_t)n;
        size_t h = u16le(p + 2);
        if (p[1] != 1) die("unsupported protocol version");
        if (p[0] == 2) {
            print_detections(p, n);
            seen++;
        } else if (p[0] >= 1 && p[0] <= 6) {
            if (h < 4 || h > n) die("bad header length");
            print_json_message(p[0], (const char *)p + h, n - h);
        } /* else: a type this client does not know, skipped */
        fflush(stdout);
    }
    return 0;
}
