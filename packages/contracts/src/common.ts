import { z } from 'zod';
import { SUBJECT_TOKEN } from './subjects.ts';

/** Version of the message schemas in this package; bump it with an upcaster (see upcast.ts). */
export const SCHEMA_VERSION = 1 as const;
export const SchemaVersion = z.literal(SCHEMA_VERSION).default(SCHEMA_VERSION);

/** A client-chosen id that makes a request idempotent (also the JetStream `Nats-Msg-Id`). */
export const RequestId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'request id: letters, digits, . _ : - (1–128 chars)');
export type RequestId = z.infer<typeof RequestId>;

export const JobId = z.string().regex(SUBJECT_TOKEN, 'job id: letters, digits, _ - : (max 128)');
export type JobId = z.infer<typeof JobId>;

export const HostName = z.string().regex(SUBJECT_TOKEN, 'host name: letters, digits, _ - : (max 128)');
export type HostName = z.infer<typeof HostName>;

export const Timestamp = z.iso.datetime({ offset: true });

/**
 * An image path as a client gives it: relative to the host's image directory, or absolute.
 * Whether it stays inside the image directory is the scheduler's and the executor's check;
 * here only what can never be valid is refused.
 */
export const ImagePath = z
  .string()
  .min(1)
  .max(1024)
  // A regex (not a refinement) so that the published JSON Schema carries the rule too.
  .regex(/^[^\0\n\r]+$/, 'image path: must not contain NUL or line breaks');

export const Priority = z.enum(['high', 'normal', 'low']);
export type Priority = z.infer<typeof Priority>;
