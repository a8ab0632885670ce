/* The splice's per-token path in C: opscale_services.router._chunk_relay.ChunkRelay.
 *
 * The same object as chunk_relay.py's PyChunkRelay, which is the reference (its docstring says what a
 * call does); the tests run both over the same reads. Compiled when the install has a C compiler
 * (setup.py: an optional extension), because a read checked and written here costs a fifth of what
 * the same checks cost as Python calls, and the router relays one such read per token.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* a call takes its argument without a tuple made for it */
    PyObject *write;       /* the client transport's write */
    PyObject *is_closing;  /* ... and is_closing */
    PyObject *flow;        /* the client connection: its `writing_paused` says the client is not keeping up */
    PyObject *now;         /* the event loop's clock */
    PyObject *last;        /* the last read relayed (framed), or None */
    double last_at;
    Py_ssize_t count;
    int chunked;
    int armed;
} ChunkRelay;

static PyObject *writing_paused_name;

/* The size of a chunk whose size line is 1-3 lower-case hex digits without a leading zero (as servers
 * write the sizes of token events), the digits ending at *digits; -1 for any other start. */
static Py_ssize_t chunk_size(const char *p, Py_ssize_t n, Py_ssize_t *digits) {
    Py_ssize_t size = 0, i = 0;
    if (n < 1 || p[0] == '0')
        return -1;
    for (; i < n && i < 4; i++) {
        char c = p[i];
        if (c >= '0' && c <= '9')
            size = size * 16 + (c - '0');
        else if (c >= 'a' && c <= 'f')
            size = size * 16 + (c - 'a' + 10);
        else
            break;
    }
    if (i == 0 || i > 3 || i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
        return -1;
    *digits = i;
    return size;
}

/* Whether `needle` occurs in p[0:n]. memmem where the C library has it (glibc, musl, the BSDs and macOS):
 * the needles start with a quote, which a JSON event is full of, so a memchr for the first byte would
 * stop at every key and string. */
static int holds(const char *p, Py_ssize_t n, const char *needle, Py_ssize_t m) {
#if defined(_WIN32)
    for (Py_ssize_t i = 0; i + m <= n; i++)
        if (memcmp(p + i, needle, (size_t)m) == 0)
            return 1;
    return 0;
#else
    return memmem(p, (size_t)n, needle, (size_t)m) != NULL;
#endif
}

/* Where the one token event starts in `data`, with its length in *piece_len; NULL when `data` is not one
 * whole chunk holding exactly one `data:` line of JSON (no CR, no error, no usage) and the blank line. */
static const char *steady_piece(const char *p, Py_ssize_t n, Py_ssize_t *piece_len) {
    Py_ssize_t digits = 0;
    Py_ssize_t size = chunk_size(p, n, &digits);
    if (size < 0)
        return NULL;
    const char *piece = p + digits + 2;
    Py_ssize_t rest = n - digits - 2;
    if (rest != size + 2 || piece[size] != '\r' || piece[size + 1] != '\n' || memchr(piece, '\r', (size_t)size))
        return NULL;
    /* one line and the blank line: the first LF is the line's end, followed only by the blank line's */
    if (size < 2 || piece[size - 1] != '\n')
        return NULL;
    const char *lf = memchr(piece, '\n', (size_t)size);
    Py_ssize_t line = lf - piece;
    if (line != size - 2 || line < 5 || memcmp(piece, "data:", 5) != 0 || piece[line - 1] != '}')
        return NULL;
    if (holds(piece, line, "\"error\"", 7) || holds(piece, line, "\"completion_tokens\"", 19))
        return NULL;
    *piece_len = size;
    return piece;
}

static PyObject *ChunkRelay_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames) {
    ChunkRelay *self = (ChunkRelay *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)
        || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "ChunkRelay takes one bytes argument");
        return NULL;
    }
    if (!self->armed)
        Py_RETURN_FALSE;
    PyObject *data = args[0];
    Py_ssize_t piece_len = 0;
    const char *piece = steady_piece(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &piece_len);
    if (piece == NULL)
        Py_RETURN_FALSE;
    PyObject *paused = PyObject_GetAttr(self->flow, writing_paused_name);
    if (paused == NULL)
        return NULL;
    int is_paused = PyObject_IsTrue(paused);
    Py_DECREF(paused);
    if (is_paused != 0)
        return is_paused < 0 ? NULL : Py_NewRef(Py_False);
    PyObject *closing = PyObject_CallNoArgs(self->is_closing);
    if (closing == NULL)
        return NULL;
    int is_closed = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (is_closed != 0)
        return is_closed < 0 ? NULL : Py_NewRef(Py_False);
    PyObject *out = data;
    if (!self->chunked) {
        out = PyBytes_FromStringAndSize(piece, piece_len);
        if (out == NULL)
            return NULL;
    } else {
        Py_INCREF(out);
    }
    PyObject *written = PyObject_CallOneArg(self->write, out);
    Py_DECREF(out);
    if (written == NULL)
        return NULL;
    Py_DECREF(written);
    PyObject *at = PyObject_CallNoArgs(self->now);
    if (at == NULL)
        return NULL;
    double now = PyFloat_AsDouble(at);
    Py_DECREF(at);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    self->count += 1;
    self->last_at = now;
    Py_INCREF(data);
    Py_SETREF(self->last, data);
    Py_RETURN_TRUE;
}

static int ChunkRelay_init(ChunkRelay *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"write", "is_closing", "flow", "chunked", "now", NULL};
    PyObject *write, *is_closing, *flow, *now;
    int chunked;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOpO:ChunkRelay", names, &write, &is_closing, &flow,
                                     &chunked, &now))
        return -1;
    Py_INCREF(write);
    Py_XSETREF(self->write, write);
    Py_INCREF(is_closing);
    Py_XSETREF(self->is_closing, is_closing);
    Py_INCREF(flow);
    Py_XSETREF(self->flow, flow);
    Py_INCREF(now);
    Py_XSETREF(self->now, now);
    Py_XSETREF(self->last, Py_NewRef(Py_None));
    self->chunked = chunked;
    self->vectorcall = ChunkRelay_vectorcall;
    self->armed = 0;
    self->count = 0;
    self->last_at = 0.0;
    return 0;
}

static PyObject *ChunkRelay_take(ChunkRelay *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *last = self->last ? self->last : Py_None;
    PyObject *taken = Py_BuildValue("(nO)", self->count, last);
    if (taken == NULL)
        return NULL;
    self->count = 0;
    Py_XSETREF(self->last, Py_NewRef(Py_None));
    return taken;
}

static int ChunkRelay_traverse(ChunkRelay *self, visitproc visit, void *arg) {
    Py_VISIT(self->write);
    Py_VISIT(self->is_closing);
    Py_VISIT(self->flow);
    Py_VISIT(self->now);
    Py_VISIT(self->last);
    return 0;
}

static int ChunkRelay_clear(ChunkRelay *self) {
    Py_CLEAR(self->write);
    Py_CLEAR(self->is_closing);
    Py_CLEAR(self->flow);
    Py_CLEAR(self->now);
    Py_CLEAR(self->last);
    return 0;
}

static void ChunkRelay_dealloc(ChunkRelay *self) {
    PyObject_GC_UnTrack(self);
    ChunkRelay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ChunkRelay_get_armed(ChunkRelay *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->armed);
}

static int ChunkRelay_set_armed(ChunkRelay *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "armed cannot be deleted");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    self->armed = truth;
    return 0;
}

static PyGetSetDef ChunkRelay_getset[] = {
    {"armed", (getter)ChunkRelay_get_armed, (setter)ChunkRelay_set_armed,
     "Whether a read may be relayed: the splice sets it while it is in its steady state.", NULL},
    {NULL},
};

static PyMemberDef ChunkRelay_members[] = {
    {"count", T_PYSSIZET, offsetof(ChunkRelay, count), READONLY, "Token events relayed since `take`."},
    {"last_at", T_DOUBLE, offsetof(ChunkRelay, last_at), READONLY, "The clock when the last read was relayed."},
    {NULL},
};

static PyMethodDef ChunkRelay_methods[] = {
    {"take", (PyCFunction)ChunkRelay_take, METH_NOARGS,
     "take() -> (count, last): the events relayed and the last read since the previous take; resets both."},
    {NULL},
};

static PyTypeObject ChunkRelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "opscale_services.router._chunk_relay.ChunkRelay",
    .tp_basicsize = sizeof(ChunkRelay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(ChunkRelay, vectorcall),
    .tp_doc = "ChunkRelay(write, is_closing, flow, chunked, now): see chunk_relay.PyChunkRelay.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ChunkRelay_init,
    .tp_dealloc = (destructor)ChunkRelay_dealloc,
    .tp_traverse = (traverseproc)ChunkRelay_traverse,
    .tp_clear = (inquiry)ChunkRelay_clear,
    .tp_call = PyVectorcall_Call,
    .tp_methods = ChunkRelay_methods,
    .tp_members = ChunkRelay_members,
    .tp_getset = ChunkRelay_getset,
};

static struct PyModuleDef chunk_relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "opscale_services.router._chunk_relay",
    .m_doc = "The router's per-token relay in C (see chunk_relay.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__chunk_relay(void) {
    if (PyType_Ready(&ChunkRelayType) < 0)
        return NULL;
    writing_paused_name = PyUnicode_InternFromString("writing_paused");
    if (writing_paused_name == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&chunk_relay_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ChunkRelayType);
    if (PyModule_AddObject(module, "ChunkRelay", (PyObject *)&ChunkRelayType) < 0) {
        Py_DECREF(&ChunkRelayType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
