#!/usr/bin/env node
// The `strata` command: registers the TypeScript loader and runs the CLI.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../services/cli/src/main.ts');
process.exitCode = await main(process.argv.slice(2));
