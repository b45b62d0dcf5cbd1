import { resetFaults, writeReliabilityDoc } from './report.ts';

/** Vitest global setup: a run starts with no fault rows and ends by writing the reliability table. */
export default async function setup(): Promise<() => Promise<void>> {
  await resetFaults();
  return async () => {
    await writeReliabilityDoc();
  };
}
