/*
 * doc.h -- a parsed configuration document with source positions.
 *
 * A `struct doc` is a jansson tree plus a side table of line/column marks,
 * built by a small recursive-descent JSON parser (jansson itself gives no
 * positions for valid documents) or from libyaml events. JSON and YAML give
 * the same tree shape: mappings are objects, sequences arrays, and YAML plain
 * scalars are typed by the YAML 1.2 core schema (null, true/false, integers,
 * floats, else strings); quoted YAML scalars are always strings.
 *
 * Marks are kept for every node pointer (but true/false/null, which are
 * jansson singletons), for every object member (key and value position) and
 * for every array element, so singletons can be placed through their slot.
 * Lines and columns are 1-based and count characters, not bytes.
 *
 * Problems found while parsing are kept in `errs`, each with a position and
 * the JSON path where the parser was. A syntax error stops the parse and
 * leaves `root` NULL; softer problems (duplicate keys, YAML anchors, aliases
 * and tags) are recorded and the parse goes on, the offending part dropped.
 */
#ifndef INFERGATE_DOC_H
#define INFERGATE_DOC_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define DOC_PATH_MAX   256     /* longest json.path kept; longer ones are cut */
#define DOC_MAX_DEPTH  64      /* deepest nesting accepted */

/* doc_flags() bits. */
#define DOC_PLAIN      (1u << 0)   /* string from a YAML plain (unquoted) scalar */
#define DOC_RETYPE     (1u << 1)   /* set by users: a plain scalar whose text
                                      changed after parsing (e.g. ${ENV}) */
#define DOC_INVALID    (1u << 2)   /* set by users: the value is known to be
                                      wrong; nothing more is to be said of it */

struct doc_pos {
    int line;                  /* 1-based; 0 = unknown */
    int col;                   /* 1-based, in characters */
};

struct doc_error {
    struct doc_pos pos;
    char *path;                /* "" for the root */
    char *msg;
};

struct doc_mark;

struct doc {
    json_t *root;              /* owned; NULL after a syntax error or for an
                                  empty YAML stream */
    struct doc_pos root_pos;
    int yaml;                  /* 1 if parsed from YAML */
    struct doc_error *errs;    /* owned */
    size_t nerrs;

    struct doc_mark *marks;    /* positions, dense (nmarks used of mcap) */
    size_t nmarks, mcap;
    uint64_t *slots;           /* index into marks: (tag << 32) | (i + 1), 0 = free */
    size_t cap;                /* slots, a power of two */
};

/*
 * Parse `len` bytes of `text` into `d` (which must be zeroed or freshly
 * doc_free()d). Returns 0 when a tree was built (errs may still hold soft
 * problems), -1 on a syntax error (described in errs, root NULL).
 */
int doc_parse_json(struct doc *d, const char *text, size_t len);
int doc_parse_yaml(struct doc *d, const char *text, size_t len);
void doc_free(struct doc *d);

/* Positions; {0, 0} when unknown. */
struct doc_pos doc_pos(const struct doc *d, const json_t *node);
struct doc_pos doc_member_pos(const struct doc *d, const json_t *obj, const char *key);
struct doc_pos doc_key_pos(const struct doc *d, const json_t *obj, const char *key);
struct doc_pos doc_elem_pos(const struct doc *d, const json_t *arr, size_t i);

/* DOC_* bits of a (non-singleton) node. */
unsigned doc_flags(const struct doc *d, const json_t *node);
void doc_add_flags(struct doc *d, const json_t *node, unsigned flags);

/* Types a YAML plain scalar by the 1.2 core schema. Returns a new reference
 * (NULL only when out of memory). */
json_t *doc_yaml_scalar(const char *s, size_t len);

/*
 * json.path building: writes `base` followed by `.key` (or `["key"]` when the
 * key is not a plain identifier; just `key` when base is empty) or `[i]`
 * into buf, cut at cap.
 */
void doc_path_key(char *buf, size_t cap, const char *base, const char *key);
void doc_path_index(char *buf, size_t cap, const char *base, size_t i);

#endif
