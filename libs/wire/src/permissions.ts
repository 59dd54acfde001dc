// What each role may publish and subscribe to on NATS: the subjects of subjects.ts, grouped by who
// speaks them. nats-server enforces these per user (nats.conf `permissions`), so a leaked gateway
// credential cannot forge step results or talk to workers, and a worker's cannot answer for the
// coordinator. Replies to requests a role receives are allowed by `allowResponses`.

/** Roles that connect to NATS. `operator` is the strata CLI (status, migrate, drain) and tools. */
export type NatsRole = 'worker' | 'coordinator' | 'gateway' | 'operator';

/** One role's NATS permissions, in nats-server's terms. */
export interface NatsPermissions {
  publish: { allow: string[]; deny: string[] };
  subscribe: { allow: string[]; deny: string[] };
  /** may answer the requests it receives */
  allowResponses: boolean;
}

const P = 'strata.v1';
const INBOX = '_INBOX.>';
/** what only the coordinator and the last stages may publish */
const COORDINATOR_OWN = [`${P}.coordinator.result.>`, `${P}.coordinator.leader`];

const ROLES: Record<NatsRole, NatsPermissions> = {
  worker: {
    publish: { allow: [`${P}.worker.heartbeat`, `${P}.worker.step.*`, `${P}.worker.ring.*`, `${P}.coordinator.result.*`, `${P}.coordinator.drain`], deny: [] },
    subscribe: { allow: [`${P}.worker.step.*`, `${P}.worker.ring.*`, `${P}.worker.seq.*`, `${P}.worker.migrate.*`, `${P}.worker.stats.*`, `${P}.coordinator.leader`, INBOX], deny: [] },
    allowResponses: true,
  },
  coordinator: {
    publish: { allow: [`${P}.worker.step.*`, `${P}.worker.seq.*`, `${P}.worker.migrate.*`, `${P}.gateway.events.*`, `${P}.coordinator.leader`], deny: [] },
    subscribe: { allow: [`${P}.worker.heartbeat`, `${P}.coordinator.>`, INBOX], deny: [] },
    allowResponses: true,
  },
  gateway: {
    publish: { allow: [`${P}.coordinator.>`], deny: COORDINATOR_OWN },
    subscribe: { allow: [`${P}.gateway.events.*`, `${P}.coordinator.leader`, INBOX], deny: [] },
    allowResponses: false,
  },
  operator: {
    publish: { allow: [`${P}.coordinator.>`, `${P}.worker.stats.*`], deny: COORDINATOR_OWN },
    subscribe: { allow: [INBOX], deny: [] },
    allowResponses: false,
  },
};

/** The NATS permissions of `role`. */
export function natsPermissions(role: NatsRole): NatsPermissions {
  const p = ROLES[role];
  return { publish: { allow: [...p.publish.allow], deny: [...p.publish.deny] }, subscribe: { allow: [...p.subscribe.allow], deny: [...p.subscribe.deny] }, allowResponses: p.allowResponses };
}

/** Every role. */
export const NATS_ROLES: readonly NatsRole[] = ['worker', 'coordinator', 'gateway', 'operator'];
