/* The server's per-request path in C: opscale_services.router._request_head.parse_request.
 *
 * parse_request(data, start, max_line, max_headers) reads one whole, plain HTTP/1.x request from
 * data[start:] in one call and returns (method, target, version, headers, body, keep_alive, end), or
 * None for anything else. The server (http1_server.py) then hands data[start:] to llhttp, whose reading is
 * the reference: the tests feed the same bytes both ways and require the same requests. So this reads only
 * what it can read exactly as llhttp does, and leaves everything else to it:
 *
 * - the request line is a method of GET, POST, PUT, DELETE, HEAD, OPTIONS or PATCH, an origin-form target
 *   (starting with '/') of RFC 3986 characters without a fragment, and HTTP/1.1 or HTTP/1.0;
 * - every header line is a token, ':', optional spaces, and a value of visible ASCII and spaces that does
 *   not end with a space, ended by CRLF; no obs-fold, no tab, no bare LF;
 * - no Transfer-Encoding, Upgrade, Expect or Proxy-Connection; at most one Connection, whose value is
 *   `close` or `keep-alive` (any case), and at most one Content-Length, of 1-15 digits;
 * - the head and its Content-Length body are all in `data`;
 * - the target is at most `max_line` bytes, each header's name and value with ": " at most `max_line`, and
 *   there are at most `max_headers` header lines (beyond them llhttp's reading refuses the request).
 *
 * `headers` holds lower-case names, a repeated header's values joined with ", " (as Http1Request's);
 * `end` is the offset in `data` just past the body. Compiled when the install has a C compiler (setup.py:
 * an optional extension): llhttp's reading costs a Python call per header, which made this path a tenth of
 * the router's instructions per request.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *methods[7];
static const char *const method_names[7] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
static PyObject *version_11, *version_10;

/* The characters allowed in a header name (RFC 9110's tchar) and in a target (RFC 3986's path and query:
 * unreserved, reserved but '#', and '%'), as tables filled at import. */
static unsigned char tchar[256], target_char[256];

static void fill(unsigned char *table, const char *others) {
    for (int c = '0'; c <= '9'; c++)
        table[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        table[c] = table[c - 32] = 1;
    for (const char *c = others; *c; c++)
        table[(unsigned char)*c] = 1;
}

/* Whether p[0:n] is `lower` in any case. */
static int equals_lower(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t m) {
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

#define IS(p, n, lower) equals_lower((p), (n), (lower), (Py_ssize_t)sizeof(lower) - 1)

/* An ASCII str of p[0:n], lower-cased when asked. */
static PyObject *ascii_str(const char *p, Py_ssize_t n, int lower) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    if (!lower) {
        memcpy(out, p, (size_t)n);
        return s;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        out[i] = (Py_UCS1)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    return s;
}

/* The offset of the CRLF that ends the line starting at i, or -1 when the line does not end in p[0:n]. */
static Py_ssize_t line_end(const char *p, Py_ssize_t i, Py_ssize_t n) {
    const char *cr = memchr(p + i, '\r', (size_t)(n - i));
    if (cr == NULL)
        return -1;
    Py_ssize_t at = cr - p;
    return (at + 1 < n && p[at + 1] == '\n') ? at : -1;
}

/* Adds one header to `headers` (its value joined to an earlier one's); 0, or -1 with an exception set. */
static int add_header(PyObject *headers, const char *name, Py_ssize_t name_n, const char *value, Py_ssize_t value_n) {
    PyObject *key = ascii_str(name, name_n, 1);
    if (key == NULL)
        return -1;
    PyObject *text = ascii_str(value, value_n, 0);
    if (text == NULL) {
        Py_DECREF(key);
        return -1;
    }
    /* one lookup for a new name (the key's hash is computed once); a repeated one leaves the size as it
     * was (its value may be the very object `text` is: the empty str is one object) */
    Py_ssize_t before = PyDict_GET_SIZE(headers);
    PyObject *previous = PyDict_SetDefault(headers, key, text);
    int failed = previous == NULL;
    if (previous != NULL && PyDict_GET_SIZE(headers) == before) {
        PyObject *joined = PyUnicode_FromFormat("%U, %U", previous, text);
        failed = joined == NULL || PyDict_SetItem(headers, key, joined) < 0;
        Py_XDECREF(joined);
    }
    Py_DECREF(key);
    Py_DECREF(text);
    return failed ? -1 : 0;
}

/* What the header lines say that the request's framing depends on */
typedef struct {
    Py_ssize_t content_length;  /* -1: none */
    int connection;             /* 0: none, 1: close, 2: keep-alive */
} Framing;

/* Reads the header lines from p[i:n] into `headers`, up to and past the empty line. Returns the offset past
 * the head; -1 when it is not a head read here (nothing set); -2 with an exception set. */
static Py_ssize_t read_headers(const char *p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t max_line,
                               Py_ssize_t max_headers, PyObject *headers, Framing *framing) {
    Py_ssize_t count = 0;
    for (;;) {
        Py_ssize_t end = line_end(p, i, n);
        if (end < 0)
            return -1;
        if (end == i)
            return end + 2;  /* the empty line: the head's end */
        if (++count > max_headers)
            return -1;
        Py_ssize_t colon = i;
        while (colon < end && tchar[(unsigned char)p[colon]])
            colon++;
        if (colon == i || colon == end || p[colon] != ':')
            return -1;
        Py_ssize_t v = colon + 1;
        while (v < end && p[v] == ' ')
            v++;
        for (Py_ssize_t k = v; k < end; k++) {
            unsigned char c = (unsigned char)p[k];
            if (c < 0x20 || c > 0x7e)
                return -1;
        }
        if (end > v && p[end - 1] == ' ')
            return -1;
        const char *name = p + i, *value = p + v;
        Py_ssize_t name_n = colon - i, value_n = end - v;
        if (name_n + value_n + 2 > max_line)
            return -1;
        if (IS(name, name_n, "content-length")) {
            if (framing->content_length >= 0 || value_n < 1 || value_n > 15)
                return -1;
            Py_ssize_t length = 0;
            for (Py_ssize_t k = 0; k < value_n; k++) {
                if (value[k] < '0' || value[k] > '9' || length > (PY_SSIZE_T_MAX - 9) / 10)
                    return -1;  /* (15 digits overflow a 32-bit Py_ssize_t) */
                length = length * 10 + (value[k] - '0');
            }
            framing->content_length = length;
        } else if (IS(name, name_n, "connection")) {
            if (framing->connection)
                return -1;
            if (IS(value, value_n, "close"))
                framing->connection = 1;
            else if (IS(value, value_n, "keep-alive"))
                framing->connection = 2;
            else
                return -1;
        } else if (IS(name, name_n, "transfer-encoding") || IS(name, name_n, "upgrade") || IS(name, name_n, "expect")
                   || IS(name, name_n, "proxy-connection")) {
            return -1;
        }
        if (add_header(headers, name, name_n, value, value_n) < 0)
            return -2;
        i = end + 2;
    }
}

static PyObject *parse_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_request(data: bytes, start: int, max_line: int, max_headers: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    const char *p = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "start is outside data");
        return NULL;
    }

    /* the request line */
    Py_ssize_t i = start, line = line_end(p, start, n);
    if (line < 0)
        Py_RETURN_NONE;
    PyObject *method = NULL;
    for (int m = 0; m < 7; m++) {
        Py_ssize_t len = (Py_ssize_t)strlen(method_names[m]);
        if (line - i > len && memcmp(p + i, method_names[m], (size_t)len) == 0 && p[i + len] == ' ') {
            method = methods[m];
            i += len + 1;
            break;
        }
    }
    if (method == NULL || i >= line || p[i] != '/')
        Py_RETURN_NONE;
    Py_ssize_t target = i;
    while (i < line && target_char[(unsigned char)p[i]])
        i++;
    Py_ssize_t target_n = i - target;
    if (target_n > max_line || line - i != 9 || p[i] != ' ' || memcmp(p + i + 1, "HTTP/1.", 7) != 0)
        Py_RETURN_NONE;
    PyObject *version;
    if (p[line - 1] == '1')
        version = version_11;
    else if (p[line - 1] == '0')
        version = version_10;
    else
        Py_RETURN_NONE;

    /* the headers, then the body */
    PyObject *headers = PyDict_New();
    if (headers == NULL)
        return NULL;
    Framing framing = {-1, 0};
    Py_ssize_t body = read_headers(p, line + 2, n, max_line, max_headers, headers, &framing);
    Py_ssize_t length = framing.content_length > 0 ? framing.content_length : 0;
    if (body < 0 || length > n - body) {
        Py_DECREF(headers);
        if (body == -2)
            return NULL;
        Py_RETURN_NONE;
    }
    int keep_alive = version == version_11 ? framing.connection != 1 : framing.connection == 2;
    PyObject *target_str = ascii_str(p + target, target_n, 0);
    PyObject *body_bytes = PyBytes_FromStringAndSize(p + body, length);
    if (target_str == NULL || body_bytes == NULL) {
        Py_DECREF(headers);
        Py_XDECREF(target_str);
        Py_XDECREF(body_bytes);
        return NULL;
    }
    PyObject *end = PyLong_FromSsize_t(body + length);
    PyObject *whole = end == NULL ? NULL : PyTuple_New(7);
    if (whole == NULL) {
        Py_DECREF(headers);
        Py_DECREF(target_str);
        Py_DECREF(body_bytes);
        Py_XDECREF(end);
        return NULL;
    }
    PyObject *items[7] = {method, target_str, version, headers, body_bytes, keep_alive ? Py_True : Py_False, end};
    Py_INCREF(method);
    Py_INCREF(version);
    Py_INCREF(items[5]);
    for (int k = 0; k < 7; k++)
        PyTuple_SET_ITEM(whole, k, items[k]);
    return whole;
}

static PyMethodDef request_head_functions[] = {
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     "parse_request(data, start, max_line, max_headers) -> (method, target, version, headers, body, "
     "keep_alive, end) for one whole, plain HTTP/1.x request in data[start:], or None for anything else."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef request_head_module = {
    PyModuleDef_HEAD_INIT,
    "_request_head",
    "One whole, plain HTTP/1.x request read in one call (see http1_server.py).",
    -1,
    request_head_functions,
};

PyMODINIT_FUNC PyInit__request_head(void) {
    fill(tchar, "!#$%&'*+-.^_`|~");
    fill(target_char, "-._~:/?[]@!$&'()*+,;=%");
    for (int m = 0; m < 7; m++) {
        if (methods[m] == NULL && (methods[m] = PyUnicode_InternFromString(method_names[m])) == NULL)
            return NULL;
    }
    if (version_11 == NULL && (version_11 = PyUnicode_InternFromString("1.1")) == NULL)
        return NULL;
    if (version_10 == NULL && (version_10 = PyUnicode_InternFromString("1.0")) == NULL)
        return NULL;
    return PyModule_Create(&request_head_module);
}
