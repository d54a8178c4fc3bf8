/* Minimal pause: like registry.k8s.io/pause (kubernetes/build/pause/linux/pause.c).
   The node's sandbox image (tests/support/node/images.py builds it with gcc -static). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { (void)signo; _exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) ; }
int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "-v")) { puts("pause feedline"); return 0; }
  if (getpid() != 1) fprintf(stderr, "Warning: pause should be the first process\n");
  struct sigaction a = {0};
  a.sa_handler = sigdown; sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  a.sa_handler = sigreap; a.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &a, NULL);
  for (;;) pause();
  return 42;
}
