/* Runs a libFuzzer target on files without libFuzzer: every file named on the command
 * line, and every file inside a directory named there.  Built with the ordinary compiler
 * (and ASan/UBSan under SAL_SANITIZE) so that ctest replays the seed corpus and the
 * inputs of past crashes as regression tests.  Exit status: non-zero when no input was
 * found; a failing input aborts (FUZZ_ASSERT) or is reported by a sanitizer. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return -1; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);  /* exact size, as libFuzzer does */
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "%s: read failed\n", path);
        fclose(f);
        free(buf);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { perror(argv[i]); return 2; }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) != 0) return 2;
            count++;
            continue;
        }
        DIR *dir = opendir(argv[i]);
        if (!dir) { perror(argv[i]); return 2; }
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
            if (run_file(path) != 0) { closedir(dir); return 2; }
            count++;
        }
        closedir(dir);
    }
    printf("%s: %d input(s) replayed, no failure\n", argv[0], count);
    return count ? 0 : 1;
}
