/* Interleaved A/B timing for scripts/bench-ab: each round runs every command once, in
 * order, so drift on a noisy machine lands on all of them alike (hyperfine runs one command's
 * N runs, then the next's). Each run starts PAUSE_MS (default 20) after the last one ended,
 * so what a command leaves to finish after it exits (cagerun exec leaves pid 1's namespace
 * teardown) lands on no other's time. Prints the median, quartiles and minimum of each, in ms.
 * Usage: ab ROUNDS 'CMD ARGS...' ...   (an argument per command, split on spaces) */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: ab ROUNDS 'CMD ARGS...' ...\n");
    return 2;
  }
  int rounds = atoi(argv[1]), n = argc - 2;
  const char *pause_env = getenv("PAUSE_MS");
  struct timespec pause = {0, (pause_env ? atol(pause_env) : 20) * 1000000L};
  double *ms = calloc((size_t)rounds * n, sizeof *ms);
  char ***cmds = calloc(n, sizeof *cmds);
  for (int j = 0; j < n; j++) {
    char *s = strdup(argv[j + 2]);
    cmds[j] = calloc(strlen(s) / 2 + 2, sizeof(char *));
    int c = 0;
    for (char *w = strtok(s, " "); w; w = strtok(NULL, " ")) cmds[j][c++] = w;
  }
  for (int i = 0; i < rounds; i++)
    for (int j = 0; j < n; j++) {
      struct timespec a, b;
      pid_t pid;
      int status;
      nanosleep(&pause, NULL);
      clock_gettime(CLOCK_MONOTONIC, &a);
      if (posix_spawn(&pid, cmds[j][0], NULL, NULL, cmds[j], environ) != 0) {
        perror(cmds[j][0]);
        return 1;
      }
      waitpid(pid, &status, 0);
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "ab: %s failed\n", argv[j + 2]);
        return 1;
      }
      ms[(size_t)j * rounds + i] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    }
  for (int j = 0; j < n; j++) {
    double *x = ms + (size_t)j * rounds;
    qsort(x, rounds, sizeof *x, by_value);
    printf("%.3f %.3f %.3f %.3f\n", x[rounds / 2], x[rounds / 4], x[3 * rounds / 4], x[0]);
  }
  return 0;
}
