/*
 * replay.c -- main() for a libFuzzer harness built without libFuzzer:
 * runs LLVMFuzzerTestOneInput once per file named on the command line
 * (directories are walked one level deep, in name order) and prints how
 * many inputs ran. A crash or a sanitizer report fails the run, as it
 * would under the fuzzer. Lets the test suite replay the saved corpus
 * on machines without clang.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL) {
        perror(path);
        return -1;
    }
    for (;;) {
        if (len == cap) {
            unsigned char *nb;
            cap = cap ? cap * 2 : 65536;
            if ((nb = realloc(buf, cap)) == NULL) {
                fclose(f);
                free(buf);
                return -1;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    size_t ran = 0;
    int i;

    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    for (i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            perror(argv[i]);
            return 2;
        }
        if (S_ISDIR(st.st_mode)) {
            struct dirent **ents;
            int n = scandir(argv[i], &ents, NULL, by_name), j;
            if (n < 0) {
                perror(argv[i]);
                return 2;
            }
            for (j = 0; j < n; j++) {
                char path[4096];
                if (ents[j]->d_name[0] != '.') {
                    snprintf(path, sizeof(path), "%s/%s", argv[i], ents[j]->d_name);
                    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                        if (run_file(path) < 0)
                            return 2;
                        ran++;
                    }
                }
                free(ents[j]);
            }
            free(ents);
        } else {
            if (run_file(argv[i]) < 0)
                return 2;
            ran++;
        }
    }
    printf("replayed %zu inputs\n", ran);
    return 0;
}
