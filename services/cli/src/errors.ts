// CLI errors: a usage mistake prints the message and usage, exit code 2.

/** The command line is wrong. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The cluster could not be reached or did not answer (NATS down, no coordinator): exit code 1. */
export class ClusterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClusterError';
  }
}
